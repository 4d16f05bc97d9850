#!/usr/bin/env bash
# All of webtune's tests, in the order CI runs them; exits non-zero at the first failing
# phase. Needs: a Rust toolchain with rustfmt and clippy, the wasm32-unknown-unknown target,
# wasm-bindgen-cli at Cargo.lock's wasm-bindgen version (it provides
# wasm-bindgen-test-runner), a Vulkan driver (lavapipe: mesa-vulkan-drivers), chromium and
# chromium-driver, nodejs + npm (tests/e2e). `.ci/run` installs whatever of that is missing, then runs this script.
#
# Environment (all optional):
#   WGPU_BACKEND     native GPU backend (default vulkan)
#   CHROMEDRIVER     chromedriver for the browser tests (default /usr/bin/chromedriver)
#   TEST_THREADS     native test threads per binary (default 2; each binary shares one device)
#   WASM_BINDGEN_TEST_TIMEOUT  seconds the browser tests may take (default 2400)
#   CHROMIUM         the browser the end-to-end tests drive (default /usr/bin/chromium)
#   WEBTUNE_TIMINGS  a file to append "phase<TAB>seconds" lines to (.ci/run prints them)
set -euo pipefail
cd "$(dirname "$0")/.."

export WGPU_BACKEND="${WGPU_BACKEND:-vulkan}"
export CHROMEDRIVER="${CHROMEDRIVER:-/usr/bin/chromedriver}"
export WASM_BINDGEN_TEST_TIMEOUT="${WASM_BINDGEN_TEST_TIMEOUT:-2400}"
TEST_THREADS="${TEST_THREADS:-2}"
# Mesa's WSI complains on every device creation when this is unset (headless CI).
if [ -z "${XDG_RUNTIME_DIR:-}" ]; then
    XDG_RUNTIME_DIR="$(mktemp -d)"
    export XDG_RUNTIME_DIR
fi
WASM=wasm32-unknown-unknown

START=$SECONDS
PHASE=""
PHASE_START=$SECONDS

# Close the running phase: record its duration.
end_phase() {
    if [ -n "$PHASE" ] && [ -n "${WEBTUNE_TIMINGS:-}" ]; then
        printf '  %s\t%d\n' "$PHASE" $((SECONDS - PHASE_START)) >>"$WEBTUNE_TIMINGS"
    fi
    PHASE=""
}

# Start a phase: a header with the time since the script began.
phase() {
    end_phase
    PHASE="$1"
    PHASE_START=$SECONDS
    printf '\n==> [+%ds] %s\n' $((SECONDS - START)) "$PHASE"
}

on_exit() {
    local rc=$?
    if [ "$rc" -ne 0 ]; then
        [ -n "${WEBTUNE_TIMINGS:-}" ] && [ -n "$PHASE" ] &&
            printf '  %s (FAILED)\t%d\n' "$PHASE" $((SECONDS - PHASE_START)) >>"$WEBTUNE_TIMINGS"
        printf '\n==> FAILED in phase "%s" (exit %d) after %ds\n' "$PHASE" "$rc" $((SECONDS - START)) >&2
    else
        end_phase
    fi
}
trap on_exit EXIT

# --- 1. Formatting ---------------------------------------------------------------------
phase "cargo fmt --check"
cargo fmt --all --check

# --- 2. Lints, native and wasm32 -------------------------------------------------------
phase "clippy (native, all targets)"
cargo clippy --all-targets -- -D warnings

phase "clippy ($WASM: lib and browser tests)"
cargo clippy --target "$WASM" --features test-hooks --lib --test wasm -- -D warnings

phase "clippy (parsers alone: --no-default-features, no wgpu)"
cargo clippy --no-default-features --lib -- -D warnings

# --- 3. Native tests on Vulkan (lavapipe in CI) ----------------------------------------
# Every test binary; each shares one device among its tests.
phase "native tests (WGPU_BACKEND=$WGPU_BACKEND cargo test)"
cargo test --no-fail-fast -- --test-threads="$TEST_THREADS"

# The whole-model parity tests again with the GPU column of the matmul table
# (ops::matmul::choose): lavapipe runs the workgroup-tile and skinny kernels that real GPUs
# get, so the fixtures check them end to end too.
phase "parity with the GPU kernel table (WEBTUNE_MATMUL=gpu)"
WEBTUNE_MATMUL=gpu cargo test --no-fail-fast --test model --test lora --test generate -- --test-threads="$TEST_THREADS"

# --- 3b. A short, bounded fuzz run of the parsers (GGUF, safetensors, JSONL) -------------
# Installs nightly + cargo-fuzz when missing; the instrumented build leaves the GPU out.
phase "fuzz smoke (scripts/fuzz-smoke.sh)"
bash scripts/fuzz-smoke.sh

# --- 4. Browser end-to-end tests (Playwright, tests/e2e/) --------------------------------
# The page in headless Chromium: the engine demo trains and its loss falls, the no-WebGPU
# message, an invalid JSONL shown by line. Builds the web bundle (debug profile: it shares
# the wasm build with phase 5), installs the pinned playwright-core, and drives the system
# Chromium ($CHROMIUM, default /usr/bin/chromium; `npx playwright install` cannot download
# browsers here). Screenshots land in artifacts/. Runs before the wasm-bindgen tests so
# this script still ends with cargo's summary.
if [ -d tests/e2e ]; then
    phase "browser end-to-end tests (Playwright, tests/e2e)"
    # With the test hooks (the device-loss test); phase 5 builds with the same features.
    cargo build --target "$WASM" --lib --features test-hooks
    wasm-bindgen --target web --out-dir www/pkg "${CARGO_TARGET_DIR:-target}/$WASM/debug/webtune.wasm"
    if [ ! -d tests/e2e/node_modules/playwright-core ]; then
        (cd tests/e2e && npm ci --no-audit --no-fund)
    fi
    (cd tests/e2e && node --test page.test.js)
fi

# --- 5. In-browser tests: wasm-bindgen-test in headless Chromium + WebGPU --------------
# .cargo/config.toml makes wasm-bindgen-test-runner the runner; webdriver.json has the flags.
phase "browser tests ($WASM, headless Chromium WebGPU)"
cargo test --target "$WASM" --features test-hooks --test wasm -- --nocapture
