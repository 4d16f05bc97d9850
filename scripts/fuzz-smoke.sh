#!/usr/bin/env bash
# CI's short, bounded fuzz run: every target under fuzz/fuzz_targets/ for at most
# FUZZ_SMOKE_RUNS executions or FUZZ_SMOKE_SECONDS seconds, whichever comes first,
# starting from the seeds in fuzz/seeds/<target>/. Exits non-zero if a target fails to
# build or crashes (the crashing input is left in fuzz/artifacts/<target>/; reproduce it
# with `cd fuzz && cargo +nightly fuzz run <target> artifacts/<target>/<file>`).
#
# Installs what is missing first: a nightly toolchain (rustup, minimal profile) and
# cargo-fuzz (cargo install). The fuzz crate builds webtune without its `gpu` feature, so
# the instrumented build is the parsers and their dependencies only (no wgpu / naga).
#
# Usage: bash scripts/fuzz-smoke.sh [TARGET...]   (default: every target)
# Environment (all optional):
#   FUZZ_SMOKE_RUNS     executions per target (default 200000)
#   FUZZ_SMOKE_SECONDS  seconds per target (default 30)
#   FUZZ_TOOLCHAIN      rustup toolchain for the build (default nightly)
# For a long run, see scripts/fuzz.sh or `cargo +nightly fuzz run <target> -- -runs=N`.
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS="${FUZZ_SMOKE_RUNS:-200000}"
SECS="${FUZZ_SMOKE_SECONDS:-30}"
TC="${FUZZ_TOOLCHAIN:-nightly}"

if ! rustup run "$TC" rustc --version >/dev/null 2>&1; then
    echo "==> installing the $TC toolchain"
    rustup toolchain install "$TC" --profile minimal
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "==> installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    targets=()
    for f in fuzz/fuzz_targets/*.rs; do
        targets+=("$(basename "$f" .rs)")
    done
fi

# Inputs up to this many bytes: model files need room for a header, metadata and tensor
# data; a few kB of JSONL covers every format and nesting the parser has.
max_len() {
    case "$1" in
        gguf | safetensors) echo 65536 ;;
        *) echo 8192 ;;
    esac
}

echo "==> building ${targets[*]} (instrumented, $TC)"
if [ "$#" -gt 0 ]; then
    for t in "${targets[@]}"; do
        (cd fuzz && cargo "+$TC" fuzz build "$t")
    done
else
    (cd fuzz && cargo "+$TC" fuzz build) # every target, in one cargo build
fi

# New inputs go to a scratch corpus; the seeds are read, never written.
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT

failed=()
for t in "${targets[@]}"; do
    mkdir -p "$scratch/$t"
    seeds=()
    if [ -d "fuzz/seeds/$t" ]; then
        seeds=("seeds/$t")
    fi
    echo "==> fuzz $t: at most $RUNS runs or ${SECS}s"
    if (cd fuzz && cargo "+$TC" fuzz run "$t" "$scratch/$t" ${seeds[@]+"${seeds[@]}"} -- \
        -runs="$RUNS" -max_total_time="$SECS" -max_len="$(max_len "$t")" \
        -timeout=10 -rss_limit_mb=2048 -print_final_stats=1); then
        echo "==> $t: no crash"
    else
        echo "==> $t: CRASH (input in fuzz/artifacts/$t/)" >&2
        failed+=("$t")
    fi
done

if [ "${#failed[@]}" -gt 0 ]; then
    echo "==> fuzz smoke failed: ${failed[*]}" >&2
    exit 1
fi
echo "==> fuzz smoke: ${#targets[@]} target(s), no crash"
