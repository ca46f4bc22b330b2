#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ briefly (FUZZ_SECONDS each, default 20) on a
# scratch copy of its committed seed corpus, so the repository's corpus never grows.
# Fails on any crash, panic, leak, timeout (an input that takes over 10 s) or memory
# blow-up (2 GiB), and leaves the input that did it in fuzz/artifacts/<target>/.
#
# Fuzzing needs a nightly toolchain and cargo-fuzz. Without nightly it says so and exits
# 0; with nightly but no cargo-fuzz it installs cargo-fuzz (bounded to 5 minutes) and
# skips, saying why, if that fails.
#
#   bash scripts/fuzz-smoke.sh                 # every target, 20 s each
#   FUZZ_SECONDS=5 bash scripts/fuzz-smoke.sh dotstream proxy_header
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

seconds="${FUZZ_SECONDS:-20}"

skip() {
    echo "fuzz-smoke: SKIPPED, no fuzzing was done: $*" >&2
    exit 0
}

if ! command -v rustup >/dev/null 2>&1 || ! rustup run nightly rustc --version >/dev/null 2>&1; then
    skip "no nightly toolchain (install one with 'rustup toolchain install nightly')"
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "fuzz-smoke: cargo-fuzz missing, installing it (at most 5 minutes)" >&2
    if ! timeout 300 cargo +nightly install cargo-fuzz --locked >&2; then
        skip "cargo-fuzz is not installed and 'cargo +nightly install cargo-fuzz --locked' failed or took over 5 minutes"
    fi
fi

if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo +nightly fuzz list)
fi

echo "fuzz-smoke: building the targets (cargo +nightly fuzz build)" >&2
cargo +nightly fuzz build >&2

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
bin_dir="target/$(rustc +nightly -vV | sed -n 's/^host: //p')/release"
failed=()
for t in "${targets[@]}"; do
    mkdir -p "$scratch/$t" "artifacts/$t"
    cp corpus/"$t"/* "$scratch/$t/"
    log="$scratch/$t.log"
    if "$bin_dir/$t" "$scratch/$t" -max_total_time="$seconds" -timeout=10 \
        -rss_limit_mb=2048 -artifact_prefix="artifacts/$t/" -print_final_stats=1 \
        >"$log" 2>&1; then
        runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
        cov=$(grep -o 'cov: [0-9]* ft: [0-9]*' "$log" | tail -1)
        echo "fuzz-smoke: $t ok: ${runs:-?} runs in ${seconds}s, ${cov:-no coverage line}" >&2
    else
        echo "fuzz-smoke: $t FAILED:" >&2
        grep -A6 -m1 -E 'panicked at|^==[0-9]+== ?ERROR' "$log" >&2 || true
        grep -E '^(SUMMARY|artifact_prefix|Base64)' "$log" >&2 || tail -20 "$log" >&2
        failed+=("$t")
    fi
done

if [ "${#failed[@]}" -gt 0 ]; then
    echo "fuzz-smoke: ${#failed[@]} target(s) failed: ${failed[*]}" >&2
    echo "fuzz-smoke: reproduce with 'cd fuzz && cargo +nightly fuzz run TARGET artifacts/TARGET/<file>'" >&2
    exit 1
fi
echo "fuzz-smoke: all ${#targets[@]} targets ran ${seconds}s each without a failure" >&2
