#!/usr/bin/env bash
# A/B of two mxguard binaries on the same traffic, one run each, back to back: the quick
# way to tell whether a change moved throughput or CPU per message (the matrix compares
# against HAProxy; this compares against an older mxguard). smtp-source -> mxguard ->
# smtp-sink, 200 warm-up messages, then COUNT timed; CPU from /proc/PID/stat.
#
#   bash benches/ab.sh BINARY SESSIONS COUNT [smtp-source flags, e.g. -d]
#   SIZE=102400 bash benches/ab.sh old/mxguard 10 1500 -d
#   for r in 1 2 3; do for b in old new; do bash benches/ab.sh $b/mxguard 100 10000 -d; done; done
#
# Builds nothing: build each commit with `cargo build --release` (a worktree per commit
# sharing CARGO_TARGET_DIR builds only mxguard) and copy its binary away. The config has
# no upstream_pool key, so binaries from before the pool run too (with it: the default).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=benches/lib.sh
source benches/lib.sh
BIN=$1 SESSIONS=$2 COUNT=$3; shift 3
SIZE=${SIZE:-1024}
require_tools smtp-sink smtp-source
bench_workdir
start_sink
MXGUARD=$BIN
printf '%s\n' "limits:" "  max_sessions: 20000" "  max_sessions_per_network: 20000" > "$W/ab.yaml"
start_mx ab < "$W/ab.yaml"
smtp-source -s "$SESSIONS" -m 200 -l "$SIZE" -f a@example.org -t b@example.net "$@" \
    "127.0.0.1:$MX_PORT" 2>/dev/null
t0=$(date +%s.%N); c0=$(cpu_ticks "$MX_PID")
smtp-source -s "$SESSIONS" -m "$COUNT" -l "$SIZE" -f a@example.org -t b@example.net "$@" \
    "127.0.0.1:$MX_PORT" 2>/dev/null
t1=$(date +%s.%N); c1=$(cpu_ticks "$MX_PID")
python3 -c "import sys; n, t, c, tck = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]); print('%s sessions=%s size=%s %s: %.0f msg/s, %.0f us CPU/msg' % (sys.argv[5], sys.argv[6], sys.argv[7], sys.argv[8], n / t, c / tck / n * 1e6))" \
    "$COUNT" "$(echo "$t1 - $t0" | bc -l)" "$((c1 - c0))" "$CLK_TCK" "$BIN" "$SESSIONS" "$SIZE" "$*"
