#!/usr/bin/env bash
# BENCH=counts (issue 14, item 3): figures that do not depend on machine noise, for
# mxguard and HAProxy in TCP mode on the same fixed traffic (smtp-source → proxy →
# smtp-sink, 1 KiB messages, 10 sessions, one message per connection and many); mxguard
# with its default warm upstream pool (`mxguard`) and without it (`mxguard-nopool`,
# `upstream_pool: {size: 0}`):
#
# - system calls per message: `strace -f -c` attached to the running proxy (all its
#   threads) for exactly one smtp-source run of COUNT messages, after a warm-up run;
#   total calls / COUNT, and the most frequent calls;
# - user-space instructions per message: the proxy runs under
#   `valgrind --tool=callgrind`; two runs of CG_SMALL and CG_LARGE messages, each from
#   start to a clean exit (SIGTERM), and Ir/message = (Ir(large) - Ir(small)) /
#   (CG_LARGE - CG_SMALL), so start-up, the first-message warm-up and shutdown cancel out.
#
#   BENCH=counts bash benches/bench.sh              # COUNT=2000, CG_SMALL=200, CG_LARGE=1000
#   BENCH=counts QUICK=1 bash benches/bench.sh      # smoke: 200 / 20 / 60
#   BENCH=counts COUNT_TARGETS=mxguard COUNT_PATTERNS=conn bash benches/bench.sh
#   BENCH=counts CG_SMALL=100 CG_LARGE=400 bash benches/bench.sh   # shorter callgrind runs
#
# System call counts move a little with timing (an epoll_wait under load returns more
# events per call), so they are repeatable to a few per cent, not exactly; instruction
# counts are repeatable to well under one per cent. strace slows the proxy down by an
# order of magnitude: never read timings from this mode.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=benches/lib.sh
source benches/lib.sh

COUNT=${COUNT:-2000}
CG_SMALL=${CG_SMALL:-200}
CG_LARGE=${CG_LARGE:-1000}
if [ -n "${QUICK:-}" ]; then COUNT=200; CG_SMALL=20; CG_LARGE=60; fi
SESSIONS=${COUNT_SESSIONS:-10}
SIZE=${COUNT_SIZE:-1024}
read -r -a TARGETS <<< "${COUNT_TARGETS:-haproxy mxguard mxguard-nopool}"
read -r -a PATTERNS <<< "${COUNT_PATTERNS:-conn reuse}"
require_tools smtp-sink smtp-source haproxy python3 cargo strace valgrind callgrind_annotate
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

bench_workdir
build_mxguard
start_sink
echo "bench: counts (COUNT=$COUNT, callgrind $CG_SMALL/$CG_LARGE, $SESSIONS sessions, $SIZE bytes)" >&2

# the default matrix's mxguard configuration (its default upstream pool), and the same
# without the pool
MX_YAML=$'limits:\n  max_sessions: 20000\n  max_sessions_per_network: 20000\n'
MX_NOPOOL_YAML="${MX_YAML}"$'upstream_pool: { size: 0 }\n'

start_target() { # target [wrapper…] -> T_PORT T_PID
    local t=$1; shift
    case "$t" in
        haproxy) start_haproxy "$@"; T_PORT=$HAP_PORT; T_PID=$HAP_PID ;;
        mxguard) start_mx mxguard "$@" <<< "$MX_YAML"; T_PORT=$MX_PORT; T_PID=$MX_PID ;;
        mxguard-nopool) start_mx mxguard-nopool "$@" <<< "$MX_NOPOOL_YAML"; T_PORT=$MX_PORT; T_PID=$MX_PID ;;
        *) echo "bench: unknown target $t (haproxy, mxguard, mxguard-nopool)" >&2; exit 2 ;;
    esac
}

send() { # port messages pattern
    local d=()
    [ "$3" = reuse ] && d=(-d)
    timeout 900 smtp-source "${d[@]}" -s "$SESSIONS" -m "$2" -l "$SIZE" -f bench@example.org \
        -t rcpt@example.net -M client.bench "127.0.0.1:$1" 2>>"$W/source.err" \
        || { echo "bench: smtp-source to port $1 failed (see $W/source.err)" >&2; exit 1; }
}

fd_count() { ls "/proc/$1/fd" 2>/dev/null | wc -l; }
# the proxy has closed every connection of the run (its upstream side lags the client's
# QUIT): back to the descriptors it had before (bounded)
wait_fds() { # pid baseline seconds
    local n=$(( $3 * 20 ))
    for _ in $(seq 1 "$n"); do [ "$(fd_count "$1")" -le "$2" ] && return 0; sleep 0.05; done
    echo "bench: pid $1 still has $(fd_count "$1") descriptors (had $2)" >&2
}

# the descriptor count once it stops moving (mxguard's warm pool fills after the start
# and refills after a run): the baseline a run's end is measured against (bounded)
settled_fds() { # pid -> count on stdout
    local a b
    a=$(fd_count "$1")
    for _ in $(seq 1 40); do
        sleep 0.25
        b=$(fd_count "$1")
        [ "$a" = "$b" ] && break
        a=$b
    done
    echo "$a"
}

strace_run() { # target pattern -> $W/strace.TARGET.PATTERN
    local t=$1 p=$2 out="$W/strace.$1.$2" base sp
    start_target "$t"
    send "$T_PORT" 50 "$p"
    base=$(settled_fds "$T_PID")
    wait_fds "$T_PID" "$base" 5
    strace -f -c -U name,calls -S calls -o "$out" -p "$T_PID" 2>"$out.err" &
    sp=$!
    wait_line "$out.err" "attached" 10 || { cat "$out.err" >&2; exit 1; }
    send "$T_PORT" "$COUNT" "$p"
    wait_fds "$T_PID" "$base" 10
    kill -INT "$sp"
    wait "$sp" || true
    stop_pid "$T_PID"
    echo "  strace $t $p: $(awk '$1 == "total" {print $2}' "$out") calls for $COUNT messages" >&2
}

callgrind_run() { # target pattern messages -> $W/cg.TARGET.PATTERN.N
    local t=$1 p=$2 n=$3 out="$W/cg.$1.$2.$3" base
    START_WAIT=180 start_target "$t" valgrind --tool=callgrind --callgrind-out-file="$out"
    base=$(settled_fds "$T_PID")
    send "$T_PORT" "$n" "$p"
    wait_fds "$T_PID" "$base" 60
    stop_pid "$T_PID" 120
    [ -s "$out" ] || { echo "bench: callgrind wrote no $out" >&2; exit 1; }
    echo "  callgrind $t $p $n: $(callgrind_annotate "$out" 2>/dev/null | awk '/PROGRAM TOTALS/ {print $1}') Ir" >&2
}

for t in "${TARGETS[@]}"; do
    for p in "${PATTERNS[@]}"; do
        strace_run "$t" "$p"
        callgrind_run "$t" "$p" "$CG_SMALL"
        callgrind_run "$t" "$p" "$CG_LARGE"
    done
done

python3 - "$W" "$COUNT" "$CG_SMALL" "$CG_LARGE" "$SESSIONS" "$SIZE" "${TARGETS[*]}" "${PATTERNS[*]}" <<'PY'
import collections, re, subprocess, sys
w, count, small, large, sessions, size = sys.argv[1], *map(int, sys.argv[2:7])
targets, patterns = sys.argv[7].split(), sys.argv[8].split()
label = {"conn": "1 msg/conn", "reuse": "many/conn (-d)"}
name = {"haproxy": "HAProxy", "mxguard": "mxguard", "mxguard-nopool": "mxguard (no pool)"}

def syscalls(t, p):
    calls = {}
    for line in open(f"{w}/strace.{t}.{p}"):
        f = line.split()
        if len(f) == 2 and f[1].isdigit():
            calls[f[0]] = int(f[1])
    return calls

def annotate(path):
    return subprocess.run(["callgrind_annotate", "--inclusive=no", "--auto=no", "--threshold=100", path],
                          capture_output=True, text=True).stdout

def total_ir(path):
    m = re.search(r"^\s*([\d,]+).*PROGRAM TOTALS", annotate(path), re.M)
    return int(m.group(1).replace(",", "")) if m else float("nan")

def by_function(path):
    """Ir of each function's own code, the file names (inlined code) merged."""
    fns = collections.Counter()
    for line in annotate(path).splitlines():
        m = re.match(r"^\s*([\d,]+)\s+\(\s*[\d.]+%\)\s+(.*?)(\s+\[[^]]*\])?$", line)
        if not m or "PROGRAM TOTALS" in line:
            continue
        name = re.split(r"(?<!:):(?!:)", m.group(2), maxsplit=1)[-1]
        fns[name] += int(m.group(1).replace(",", ""))
    return fns

sc, ir = {}, {}
for t in targets:
    for p in patterns:
        sc[t, p] = syscalls(t, p)
        ir[t, p] = (total_ir(f"{w}/cg.{t}.{p}.{large}") - total_ir(f"{w}/cg.{t}.{p}.{small}")) / (large - small)

print(f"System calls per message (strace -f -c, {count} messages) and user-space instructions")
print(f"per message (callgrind, ({large} - {small}) messages); smtp-source -s {sessions} -l {size}.\n")
head = "| connection | " + " | ".join(f"{name.get(t, t)} syscalls/msg" for t in targets)
head += " | " + " | ".join(f"{name.get(t, t)} Ir/msg" for t in targets)
both = "haproxy" in targets and "mxguard" in targets
if both:
    head += " | mxguard/HAProxy syscalls | mxguard/HAProxy Ir"
print(head + " |")
print("|---" * (1 + 2 * len(targets) + (2 if both else 0)) + "|")
for p in patterns:
    per = {t: sc[t, p].get("total", 0) / count for t in targets}
    row = f"| {label.get(p, p)} | " + " | ".join(f"{per[t]:.1f}" for t in targets)
    row += " | " + " | ".join(f"{ir[t, p]:,.0f}" for t in targets)
    if both:
        row += f" | {per['mxguard'] / per['haproxy'] * 100:.0f} % | {ir['mxguard', p] / ir['haproxy', p] * 100:.0f} %"
    print(row + " |")

print("\nMost frequent system calls, per message:\n")
print("| proxy | connection | calls per message |")
print("|---|---|---|")
for t in targets:
    for p in patterns:
        calls = sorted(((v, k) for k, v in sc[t, p].items() if k != "total"), reverse=True)[:6]
        cells = ", ".join(f"{k} {v / count:.1f}" for v, k in calls)
        print(f"| {name.get(t, t)} | {label.get(p, p)} | {cells} |")

print(f"\nWhere the instructions of one message go: the functions with the most instructions of")
print(f"their own per message, (Ir({large}-message run) - Ir({small}-message run)) / {large - small}:\n")
for t in targets:
    for p in patterns:
        big, few = by_function(f"{w}/cg.{t}.{p}.{large}"), by_function(f"{w}/cg.{t}.{p}.{small}")
        per = {fn: (big[fn] - few.get(fn, 0)) / (large - small) for fn in big}
        top = sorted(per.items(), key=lambda kv: -kv[1])[:10]
        print(f"- {name.get(t, t)}, {label.get(p, p)}: " + "; ".join(f"`{fn}` {v:,.0f}" for fn, v in top))
PY
