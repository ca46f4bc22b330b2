#!/usr/bin/env bash
# BENCH=filters (issue 13): what a content filter costs, and where it is cheaper to run.
# One rspamd instance (its normal worker for HTTP, its proxy worker as a milter scanning
# by itself) judges every message for four targets, all relaying to one smtp-sink:
#
#   mxplain    mxguard, no filter (the reference)
#   mxhttp     mxguard asking rspamd over HTTP (/checkv2) at end of message
#   mxmilter   mxguard speaking milter to rspamd's proxy worker
#   postfix    a private Postfix with smtpd_milters = rspamd's proxy worker
#
# Load: tls_load (plaintext), 1 KiB messages, 10 sessions, one message per connection
# and many per connection. Targets interleaved, order rotating per repetition; medians.
# CPU per message: the target's process (Postfix: its whole instance, counted until its
# queue is empty again) plus rspamd's (all its workers), so the columns compare the
# whole cost of a scanned message.
#
#   BENCH=filters bash benches/bench.sh            # REPS=3, 1,000 messages per run
#   BENCH=filters QUICK=1 bash benches/bench.sh    # smoke: 1 repetition, 100 messages
#   BENCH=filters FILTER_SESSIONS="10 50" bash benches/bench.sh
#
# Needs rspamd (Debian's package), Postfix, smtp-sink, curl and root (Postfix).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=benches/lib.sh
source benches/lib.sh

REPS=${REPS:-3}
SCALE=${SCALE:-1}
if [ -n "${QUICK:-}" ]; then REPS=1; SCALE=0.1; fi
read -r -a SESSION_LIST <<< "${FILTER_SESSIONS:-10}"
read -r -a TARGETS <<< "${FILTER_TARGETS:-mxplain mxhttp mxmilter postfix}"
require_tools smtp-sink python3 cargo postfix rspamd curl
[ "$(id -u)" = 0 ] || { echo "bench: BENCH=filters runs a private Postfix and needs root" >&2; exit 1; }

bench_workdir
build_tls_load
build_mxguard
start_sink

# --- rspamd: one normal worker (HTTP) and one proxy worker (milter, self_scan) --------
start_rspamd() { # -> RSPAMD_HTTP RSPAMD_MILTER RSPAMD_PID
    local d="$W/rspamd" dns
    mkdir -p "$d/run" "$d/db" "$d/log" "$d/local.d" "$d/override.d"
    RSPAMD_HTTP=$(free_port); RSPAMD_MILTER=$(free_port); dns=$(free_port)
    printf '%s\n' 'use = ["x-spamd-result", "x-spam-status"];' 'skip_local = false;' \
        'skip_authenticated = false;' > "$d/local.d/milter_headers.conf"
    cat > "$d/rspamd.conf" <<CONF
.include "\$CONFDIR/common.conf"
options {
    pidfile = "\$RUNDIR/rspamd.pid";
    .include "\$CONFDIR/options.inc"
    dns { nameserver = ["127.0.0.1:$dns"]; timeout = 1s; retransmits = 1; }
    disable_hyperscan = true;
}
logging { type = "file"; filename = "$d/rspamd.log"; level = "warning"; }
worker "normal" {
    bind_socket = "127.0.0.1:$RSPAMD_HTTP";
    .include "\$CONFDIR/worker-normal.inc"
    count = 1;
}
worker "rspamd_proxy" {
    bind_socket = "127.0.0.1:$RSPAMD_MILTER";
    milter = yes;
    timeout = 120s;
    upstream "local" { default = yes; self_scan = yes; }
    count = 1;
}
CONF
    # its own session: RSPAMD_PID leads the process group of the main process and workers
    setsid rspamd -f -i -u root -g root -c "$d/rspamd.conf" --var=CONFDIR=/etc/rspamd \
        --var=LOCAL_CONFDIR="$d" --var=RUNDIR="$d/run" --var=DBDIR="$d/db" \
        --var=LOGDIR="$d/log" >"$d/rspamd.out" 2>&1 &
    RSPAMD_PID=$!; PIDS+=("$RSPAMD_PID")
    for _ in $(seq 1 2400); do
        if curl -s --max-time 2 "http://127.0.0.1:$RSPAMD_HTTP/ping" 2>/dev/null | grep -q pong \
            && wait_banner_silent "$RSPAMD_MILTER"; then
            return 0
        fi
        kill -0 "$RSPAMD_PID" 2>/dev/null || break
        sleep 0.1
    done
    echo "bench: rspamd did not start; its output:" >&2; tail -20 "$d/rspamd.out" >&2; exit 1
}
# a listening TCP port (rspamd's milter port sends no banner)
wait_banner_silent() { python3 -c "import socket,sys; socket.create_connection(('127.0.0.1', int(sys.argv[1])), 1).close()" "$1" 2>/dev/null; }
start_rspamd

filters_yaml() { # kind
    case "$1" in
        http) printf '%s\n' "filters:" "  - name: rspamd" "    rspamd: http://127.0.0.1:$RSPAMD_HTTP" ;;
        milter) printf '%s\n' "filters:" "  - name: rspamd" "    milter: 127.0.0.1:$RSPAMD_MILTER" \
            "    tolerate_unoffered_actions: true" ;;
        none) ;;
    esac
}
declare -A PORT PID
for kind in plain http milter; do
    t=mx$kind
    [[ " ${TARGETS[*]} " == *" $t "* ]] || continue
    { printf '%s\n' "limits:" "  max_sessions: 20000" "  max_sessions_per_network: 20000"
      filters_yaml "$([ "$kind" = plain ] && echo none || echo "$kind")"; } > "$W/$t.yaml"
    start_mx "$t" < "$W/$t.yaml"
    PORT[$t]=$MX_PORT; PID[$t]=$MX_PID
done
if [[ " ${TARGETS[*]} " == *" postfix "* ]]; then
    make_certs "$W/certs"
    PFX_SMTPD=$(free_port)
    PFX_MAIN_EXTRA="smtpd_milters = inet:127.0.0.1:$RSPAMD_MILTER
milter_default_action = tempfail
milter_protocol = 6" pfx_create "$W/pfx" "$PFX_SMTPD" "" "$W/certs"
    pfx_start "$W/pfx" "$PFX_SMTPD"
    PORT[postfix]=$PFX_SMTPD; PID[postfix]=$PFX_PID
fi

count_for() { # variant
    local base=1000
    [ "$1" = reuse ] && base=2000
    python3 -c "print(max(50, int($base * $SCALE)))"
}
cpu_of() { # target: its CPU ticks plus rspamd's
    local own rs
    if [ "$1" = postfix ]; then own=$(group_stats "$PFX_PID" | awk '{print $1}'); else own=$(cpu_ticks "${PID[$1]}"); fi
    rs=$(group_stats "$RSPAMD_PID" | awk '{print $1}')
    echo "$own $rs"
}

# one run: appends "target variant sessions messages own_ticks rspamd_ticks {json}" to $RES
run_one() { # target variant sessions
    local t=$1 v=$2 s=$3 n c0 c1 out flags=(--no-tls)
    n=$(count_for "$v")
    case "$v" in
        conn) flags+=(--per-conn 1) ;;
        reuse) flags+=(--per-conn 0) ;;
    esac
    read -r o0 r0 <<< "$(cpu_of "$t")"
    out=$("$TLS_LOAD" load --target "127.0.0.1:${PORT[$t]}" --sessions "$s" --messages "$n" \
        --size 1024 --source 127.0.0.1 --max-time 600s "${flags[@]}") \
        || { echo "bench: tls_load against $t failed" >&2; exit 1; }
    if [ "$t" = postfix ]; then pfx_drained "$W/pfx" 300 || true; fi
    read -r o1 r1 <<< "$(cpu_of "$t")"
    echo "$t $v $s $n $((o1 - o0)) $((r1 - r0)) $out" >> "$RES"
    python3 -c '
import json, sys
r = json.loads(sys.argv[2])
print("  %s: %.0f msg/s, %d ok, %d failed" % (sys.argv[1], r["rate"], r["ok"], r["failed"]))' \
        "rep $rep sessions=$s $v $t" "$out" >&2
}

echo "bench: filters (REPS=$REPS SCALE=$SCALE)" >&2
for t in "${TARGETS[@]}"; do
    "$TLS_LOAD" load --target "127.0.0.1:${PORT[$t]}" --sessions 10 --messages 100 \
        --source 127.0.0.1 --no-tls >/dev/null || { echo "bench: warm-up of $t failed" >&2; exit 1; }
done
[[ " ${TARGETS[*]} " == *" postfix "* ]] && { pfx_drained "$W/pfx" 60 || true; }
RES="$W/filter-results.txt"; : > "$RES"
for rep in $(seq 1 "$REPS"); do
    for s in "${SESSION_LIST[@]}"; do
        for v in conn reuse; do
            nt=${#TARGETS[@]}
            for k in $(seq 0 $((nt - 1))); do
                run_one "${TARGETS[$(( (k + rep) % nt ))]}" "$v" "$s"
            done
        done
    done
done

python3 - "$RES" "$REPS" "$CLK_TCK" <<'PY'
import collections, json, statistics, sys
res, reps, tck = sys.argv[1], sys.argv[2], int(sys.argv[3])
runs = collections.defaultdict(list)
for line in open(res):
    t, v, s, n, own, rs, js = line.split(" ", 6)
    r = json.loads(js)
    ok = max(1, r["ok"])
    r["own_us"] = int(own) / tck / ok * 1e6
    r["rspamd_us"] = int(rs) / tck / ok * 1e6
    runs[(t, v, int(s))].append(r)
def med(key, field):
    v = [r[field] for r in runs.get(key, []) if r.get(field) is not None]
    return statistics.median(v) if v else float("nan")
names = {"mxplain": "mxguard, no filter", "mxhttp": "mxguard + rspamd HTTP",
         "mxmilter": "mxguard + rspamd milter", "postfix": "Postfix + rspamd milter"}
failed = sum(r["failed"] for rs in runs.values() for r in rs)
print(f"Medians of {reps} repetition(s); 1 KiB messages; msg/s (ratio to Postfix + rspamd milter);")
print("latency per message p50/p99 in ms; CPU us per message of the target and of rspamd.\n")
print("| sessions | connection | target | msg/s | vs Postfix | p50 / p99 ms | CPU target | CPU rspamd |")
print("|---|---|---|---|---|---|---|---|")
for s in sorted({k[2] for k in runs}):
    for v in ("conn", "reuse"):
        base = med(("postfix", v, s), "rate")
        for t in ("mxplain", "mxhttp", "mxmilter", "postfix"):
            if (t, v, s) not in runs:
                continue
            rate = med((t, v, s), "rate")
            ratio = f"{rate / base:.2f}x" if base == base and base > 0 else "n/a"
            conn = "1 msg/conn" if v == "conn" else "many/conn"
            print(f"| {s} | {conn} | {names[t]} | {rate:.0f} | {ratio} | {med((t, v, s), 'p50_ms'):.2f} / {med((t, v, s), 'p99_ms'):.2f} | {med((t, v, s), 'own_us'):.0f} | {med((t, v, s), 'rspamd_us'):.0f} |")
print(f"\nFailed messages over all runs: {failed}.")
PY
