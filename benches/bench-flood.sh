#!/usr/bin/env bash
# BENCH=flood (issue 14, item 5): a legitimate load while 0 / 1,000 / 5,000 / 10,000
# hostile connections are held open (tls_load flood: idle after the banner, one-byte
# drippers, pre-greeting talkers, junk senders, each reconnecting when dropped), against
# mxguard (upstream: smtp-sink) and against Postfix with postscreen in front of smtpd
# (relaying to the same smtp-sink): the anchor.
#
#   BENCH=flood bash benches/bench.sh                 # REPS=3, 10 s of legitimate load per run
#   BENCH=flood QUICK=1 bash benches/bench.sh         # smoke: 1 repetition, 2 s, small floods
#   BENCH=flood FLOODS="5000" FLOOD_TARGETS=mxguard bash benches/bench.sh
#
# Each run starts the target afresh (so its memory peak is this run's), opens the flood,
# waits until every hostile slot has tried to connect, runs the legitimate load for
# LEGIT_TIME (tls_load in plaintext from 127.0.0.1: LEGIT_SESSIONS sessions, one 1 KiB
# message per connection; latency per message from connect to the 250 after the dot),
# samples memory and CPU, then stops the flood and the target. Flood sizes and targets
# are interleaved, the target order rotating per repetition; medians reported.
#
# Configuration, and why (the same idea on both sides: the legitimate sender is a
# trusted relay, the flood comes from many untrusted networks):
# - mxguard: exempt_networks [127.0.0.1/32] (only the legitimate client);
#   max_sessions_per_network 50 per /24 (the default) while the flood has FLOOD_PER_NET
#   (20) connections per /24 over 127.10.0.0/16.., so per-network limits do not refuse
#   it, as they would not refuse a botnet; max_sessions 20000, above the largest flood
#   plus the legitimate sessions, so every hostile connection is held (the worst case
#   for memory). max_sessions does not spare exempt networks: at its default of 10,000
#   the 10,000 flood would lock the legitimate client out. greet_pause stays 0 (the
#   default; MX_GREET_PAUSE=2s to try it): it applies to every client, trusted or not,
#   so a greeting delay would slow the legitimate one-message-per-connection load too.
#   Timeouts stay the defaults (command_timeout 300 s: longer than any run).
# - Postfix: postscreen on the port, postscreen_access_list = permit_mynetworks
#   (mynetworks = 127.0.0.1/32), postscreen_greet_action = enforce (the pregreet test),
#   smtpd pass; everything else Postfix's defaults (100 smtpd processes, postscreen
#   queue limits, 50 connections per client, smtpd_timeout 300 s). Its postscreen cache
#   is emptied before each run so that every run meets the same state.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=benches/lib.sh
source benches/lib.sh

REPS=${REPS:-3}
LEGIT_TIME=${LEGIT_TIME:-10s}
read -r -a FLOOD_LIST <<< "${FLOODS:-1000 5000 10000}"
if [ -n "${QUICK:-}" ]; then REPS=1; LEGIT_TIME=2s; read -r -a FLOOD_LIST <<< "${FLOODS:-200 1000}"; fi
LEGIT_SESSIONS=${LEGIT_SESSIONS:-10}
LEGIT_PER_CONN=${LEGIT_PER_CONN:-1}
FLOOD_PER_NET=${FLOOD_PER_NET:-20}
FLOOD_MIX=${FLOOD_MIX:-idle=40,drip=30,pregreet=15,junk=15}
read -r -a TARGETS <<< "${FLOOD_TARGETS:-mxguard postfix}"
require_tools smtp-sink python3 cargo openssl postfix
[ "$(id -u)" = 0 ] || { echo "bench: BENCH=flood runs a private Postfix and needs root" >&2; exit 1; }
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
max_flood=0
for n in "${FLOOD_LIST[@]}"; do [ "$n" -gt "$max_flood" ] && max_flood=$n; done
if [ "$(ulimit -n)" -lt $(( max_flood + 1000 )) ]; then
    echo "bench: ulimit -n is $(ulimit -n): too few descriptors for a flood of $max_flood" >&2
    exit 1
fi

bench_workdir
build_tls_load
build_mxguard
start_sink
make_certs "$W/certs"
PFX_PORT=$(free_port)
pfx_create "$W/pfx" "$(free_port)" "$PFX_PORT" "$W/certs"
MX_YAML="listeners:
  - name: mx
    address: 127.0.0.1:{port}
limits:
  max_sessions: 20000
  exempt_networks: [127.0.0.1/32]
  greet_pause: ${MX_GREET_PAUSE:-0s}
"

start_target() { # target -> T_PORT T_PID
    case "$1" in
        mxguard) start_mx mxguard <<< "$MX_YAML"; T_PORT=$MX_PORT; T_PID=$MX_PID ;;
        postfix)
            rm -f "$W/pfx/data/postscreen_cache.db"
            pfx_start "$W/pfx" "$PFX_PORT"; T_PORT=$PFX_PORT; T_PID=$PFX_PID ;;
        *) echo "bench: unknown target $1 (mxguard, postfix)" >&2; exit 2 ;;
    esac
}
stop_target() {
    if [ "$1" = postfix ]; then pfx_drained "$W/pfx" 120 || true; pfx_stop; else stop_pid "$T_PID"; fi
}
# "cpu_ticks memory_kib processes": mxguard's process (VmRSS), or the Postfix instance
# (the sum of its processes' proportional set sizes)
usage() { # target
    if [ "$1" = postfix ]; then
        group_stats "$T_PID"
    else
        echo "$(cpu_ticks "$T_PID") $(status_kib "$T_PID" VmRSS) 1"
    fi
}

# one run, its record in $W/runs/TARGET.N.REP.{meta,legit,flood}
run_one() { # target flood rep
    local t=$1 n=$2 rep=$3 base="$W/runs/$1.$2.$3" fp= u0 u1 t0 t1 hwm=0 fresh
    start_target "$t"
    # warm-up, not recorded (first-use allocations, Postfix's first smtpd processes)
    "$TLS_LOAD" load --target "127.0.0.1:$T_PORT" --no-tls --source 127.0.0.1 --sessions 5 \
        --messages 50 --max-time 30s >/dev/null || { echo "bench: warm-up of $t failed" >&2; exit 1; }
    fresh=$(usage "$t" | awk '{print $2}')
    if [ "$n" -gt 0 ]; then
        "$TLS_LOAD" flood --target "127.0.0.1:$T_PORT" --connections "$n" --mix "$FLOOD_MIX" \
            --per-network "$FLOOD_PER_NET" --duration 900s >"$base.flood" 2>"$base.flood.log" &
        fp=$!; PIDS+=("$fp")
        wait_line "$base.flood.log" '^flood: ready' 180 \
            || { echo "bench: the flood of $n did not ramp up" >&2; cat "$base.flood.log" >&2; exit 1; }
    fi
    read -r u0 _ _ < <(usage "$t")
    t0=$(date +%s%N)
    "$TLS_LOAD" load --target "127.0.0.1:$T_PORT" --no-tls --source 127.0.0.1 \
        --sessions "$LEGIT_SESSIONS" --per-conn "$LEGIT_PER_CONN" --messages 100000000 \
        --max-time "$LEGIT_TIME" --io-timeout 60s > "$base.legit" \
        || { echo "bench: legitimate load against $t failed" >&2; exit 1; }
    t1=$(date +%s%N)
    read -r u1 mem procs < <(usage "$t")
    [ "$t" = mxguard ] && hwm=$(status_kib "$T_PID" VmHWM)
    if [ -n "$fp" ]; then
        stop_pid "$fp" 30
        grep '^flood:' "$base.flood.log" | tail -1 >&2 || true
    fi
    echo "cpu_ticks=$((u1 - u0)) ms=$(( (t1 - t0) / 1000000 )) mem_kib=$mem procs=$procs hwm_kib=$hwm fresh_kib=$fresh" > "$base.meta"
    stop_target "$t"
    python3 -c '
import json, sys
r = json.loads(open(sys.argv[2]).read())
r = {k: float("nan") if v is None else v for k, v in r.items()}  # no message: no latency
print("  %s: %.0f msg/s, p50 %.2f ms, p99 %.2f ms, %d failed, %d waiting > 1 s at the end, memory %s KiB, errors %s" % (
    sys.argv[1], r["rate"], r["p50_ms"], r["p99_ms"], r["failed"], r["unfinished_over_1s"], sys.argv[3], r["errors"]))' \
        "rep $rep flood=$n $t" "$base.legit" "$mem" >&2
}

mkdir -p "$W/runs"
echo "bench: flood (REPS=$REPS, floods 0 ${FLOOD_LIST[*]}, legitimate load $LEGIT_TIME x $LEGIT_SESSIONS sessions)" >&2
for rep in $(seq 1 "$REPS"); do
    for n in 0 "${FLOOD_LIST[@]}"; do
        nt=${#TARGETS[@]}
        for k in $(seq 0 $((nt - 1))); do
            run_one "${TARGETS[$(( (k + rep) % nt ))]}" "$n" "$rep"
        done
    done
done

python3 - "$W/runs" "$REPS" "$CLK_TCK" "$LEGIT_SESSIONS" "$LEGIT_PER_CONN" "$LEGIT_TIME" "$FLOOD_MIX" "$FLOOD_PER_NET" <<'PY'
import collections, glob, json, os, statistics, sys
d, reps, tck, sessions, per_conn, legit_time, mix, per_net = sys.argv[1:9]
tck = int(tck)
runs = collections.defaultdict(list)
for meta in glob.glob(f"{d}/*.meta"):
    t, n, rep = os.path.basename(meta)[:-5].split(".")
    base = meta[:-5]
    m = dict(kv.split("=") for kv in open(meta).read().split())
    r = json.loads(open(base + ".legit").read())
    r = {k: float("nan") if v is None else v for k, v in r.items()}  # no message: no latency
    f = json.loads(open(base + ".flood").read()) if os.path.exists(base + ".flood") else {}
    r["cpu_pct"] = int(m["cpu_ticks"]) / tck / (int(m["ms"]) / 1000) * 100
    r["mem_mib"] = int(m["mem_kib"]) / 1024
    r["hwm_mib"] = int(m["hwm_kib"]) / 1024
    r["fresh_mib"] = int(m["fresh_kib"]) / 1024
    r["procs"] = int(m["procs"])
    r["open_at_end"] = f.get("open_at_end", 0)
    r["dropped"] = f.get("closed_by_server", 0)
    r["refused"] = f.get("banner_4xx", 0) + f.get("connect_failed", 0)
    runs[(t, int(n))].append(r)
def med(key, field):
    v = [r[field] for r in runs.get(key, [])]
    return statistics.median(v) if v else float("nan")
def f(v, spec, unit=""):
    return "n/a" if v != v else format(v, spec) + unit
name = {"mxguard": "mxguard", "postfix": "Postfix + postscreen"}
print(f"Medians of {reps} repetition(s). Legitimate load: {sessions} sessions, {'one message' if per_conn == '1' else per_conn + ' messages'} "
      f"per connection, 1 KiB, plaintext, for {legit_time}; latency per message from connect to the 250 after the dot. "
      f"Flood mix {mix}, {per_net} per /24, reconnecting when dropped. CPU: % of one core during the load "
      f"(mxguard's process; Postfix: the whole instance). Failed, and still waiting for over "
      f"a second when the load's time was up: summed over the repetitions. Memory during the flood: mxguard VmRSS (peak VmHWM), "
      f"Postfix the sum of its processes' Pss.\n")
print("| hostile connections | target | legit msg/s | vs no flood | p50 ms | p99 ms | p99 vs no flood | legit failed | legit waiting > 1 s at the end | CPU % | memory MiB | processes | hostile held at end | hostile dropped | hostile refused |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for n in sorted({k[1] for k in runs}):
    for t in ("mxguard", "postfix"):
        k = (t, n)
        if k not in runs:
            continue
        base = (t, 0)
        rate, p99 = med(k, "rate"), med(k, "p99_ms")
        vs = rate / med(base, "rate") if base in runs else float("nan")
        p99vs = p99 / med(base, "p99_ms") if base in runs else float("nan")
        mem = f"{med(k, 'mem_mib'):.1f}" + (f" (peak {med(k, 'hwm_mib'):.1f})" if t == "mxguard" else "")
        failed = sum(r["failed"] for r in runs[k])
        stuck = sum(r["unfinished_over_1s"] for r in runs[k])
        print(f"| {n:,} | {name[t]} | {rate:.0f} | {f(vs, '.2f', 'x')} | {f(med(k, 'p50_ms'), '.2f')} | {f(p99, '.2f')} | {f(p99vs, '.2f', 'x')} | {failed} | {stuck} | "
              f"{med(k, 'cpu_pct'):.0f} | {mem} | {med(k, 'procs'):.0f} | {med(k, 'open_at_end'):.0f} | {med(k, 'dropped'):.0f} | {med(k, 'refused'):.0f} |")
mx = [(n, med(("mxguard", n), "mem_mib"), med(("mxguard", n), "fresh_mib")) for n in sorted({k[1] for k in runs}) if n and ("mxguard", n) in runs]
if mx:
    print("\nmxguard memory per held hostile connection ((VmRSS during - VmRSS fresh) / connections): "
          + ", ".join(f"{(m - f) * 1024 / n:.1f} KiB at {n:,}" for n, m, f in mx) + ".")
PY
