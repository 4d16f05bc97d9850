#!/usr/bin/env bash
# Run every fuzz target under fuzz/fuzz_targets/ for a bounded time each (cargo-fuzz /
# libFuzzer); exit non-zero if any target crashes (or fails to build). Crashing inputs are
# left in fuzz/artifacts/<target>/.
#
# Usage: bash scripts/fuzz.sh [TARGET...]        (default: every target)
# Environment (all optional):
#   FUZZ_SECONDS   time per target, after its build (default 20)
#   FUZZ_TARGET_DIR  cargo target dir for the instrumented build (default fuzz/target)
#   FUZZ_SANITIZER address|none|... passed to cargo fuzz -s (default address)
#   FUZZ_BUILD_FLAGS extra cargo-fuzz build flags, e.g. "--codegen-units 4" (faster builds)
#
# cargo-fuzz needs nightly-only rustc flags (-Zsanitizer, sanitizer coverage). On a stable
# toolchain this script sets RUSTC_BOOTSTRAP=1, which unlocks them for this build only.
# Seeds: fuzz/seeds/<target>/ is copied into the (git-ignored) corpus fuzz/corpus/<target>/.
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_EACH="${FUZZ_SECONDS:-20}"
TARGET_DIR="${FUZZ_TARGET_DIR:-$PWD/fuzz/target}"
SANITIZER="${FUZZ_SANITIZER:-address}"
read -r -a BUILD_FLAGS <<<"${FUZZ_BUILD_FLAGS:-}"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "cargo-fuzz is missing: cargo install cargo-fuzz" >&2
    exit 2
fi
if ! rustc --version | grep -q nightly; then
    export RUSTC_BOOTSTRAP=1
fi

if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    targets=()
    for f in fuzz/fuzz_targets/*.rs; do
        targets+=("$(basename "$f" .rs)")
    done
fi

failed=()
for t in "${targets[@]}"; do
    echo "==> fuzz $t for ${SECONDS_EACH}s"
    mkdir -p "fuzz/corpus/$t"
    if [ -d "fuzz/seeds/$t" ]; then
        cp -n "fuzz/seeds/$t"/* "fuzz/corpus/$t"/ 2>/dev/null || true
    fi
    if ! (cd fuzz && cargo fuzz build -s "$SANITIZER" --target-dir "$TARGET_DIR" ${BUILD_FLAGS[@]+"${BUILD_FLAGS[@]}"} "$t"); then
        echo "==> $t: build FAILED" >&2
        failed+=("$t (build)")
        continue
    fi
    if (cd fuzz && cargo fuzz run -s "$SANITIZER" --target-dir "$TARGET_DIR" ${BUILD_FLAGS[@]+"${BUILD_FLAGS[@]}"} "$t" "corpus/$t" -- \
        -max_total_time="$SECONDS_EACH" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1); then
        echo "==> $t: no crash in ${SECONDS_EACH}s"
    else
        echo "==> $t: CRASH (inputs in fuzz/artifacts/$t/)" >&2
        failed+=("$t")
    fi
done

if [ "${#failed[@]}" -gt 0 ]; then
    echo "==> fuzzing failed: ${failed[*]}" >&2
    exit 1
fi
echo "==> fuzzing: ${#targets[@]} target(s), no crash"
