#!/usr/bin/env bash
# BENCH=tls (issue 14, item 4): STARTTLS terminated by mxguard (plaintext to the
# smtp-sink upstream) against STARTTLS terminated by Postfix's own smtpd (a private
# Postfix relaying to the same smtp-sink), driven by the tls_load bench binary
# (benches/tls_load): 1 KiB messages, 10 and 100 sessions; one message per connection
# with TLS session resumption on and off, and many messages per connection. mxguard
# without TLS on the same load is the reference column. Targets interleaved in one run,
# their order rotating per repetition; medians reported.
#
#   BENCH=tls bash benches/bench.sh                   # REPS=3
#   BENCH=tls QUICK=1 bash benches/bench.sh           # smoke: 1 repetition, small counts
#   BENCH=tls TLS_SESSIONS=100 REPS=5 bash benches/bench.sh
#
# Latency per message (p50/p99) is measured by tls_load: from the start of the
# connection for the first message of a connection (TCP, banner, EHLO, STARTTLS, the
# handshake, EHLO again), from MAIL FROM for later ones. CPU per message: mxguard's
# process; for Postfix every process of the instance (master, smtpd, cleanup, qmgr, the
# smtp client that relays, tlsmgr…), counted until its queue is empty again.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=benches/lib.sh
source benches/lib.sh

REPS=${REPS:-3}
SCALE=${SCALE:-1}
if [ -n "${QUICK:-}" ]; then REPS=1; SCALE=0.05; fi
read -r -a SESSION_LIST <<< "${TLS_SESSIONS:-10 100}"
SIZE=${TLS_SIZE:-1024}
read -r -a TARGETS <<< "${TLS_TARGETS:-mxplain mxguard postfix}"
require_tools smtp-sink python3 cargo openssl postfix
[ "$(id -u)" = 0 ] || { echo "bench: BENCH=tls runs a private Postfix and needs root" >&2; exit 1; }
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

bench_workdir
build_tls_load
build_mxguard
start_sink
make_certs "$W/certs"

start_mx mxguard <<YAML
listeners:
  - name: mx
    address: 127.0.0.1:{port}
    tls: { cert: $W/certs/leaf-chain.crt, key: $W/certs/leaf.key }
limits:
  max_sessions: 20000
  max_sessions_per_network: 20000
YAML
PFX_SMTPD=$(free_port)
pfx_create "$W/pfx" "$PFX_SMTPD" "" "$W/certs"
pfx_start "$W/pfx" "$PFX_SMTPD"
declare -A PORT=([mxplain]=$MX_PORT [mxguard]=$MX_PORT [postfix]=$PFX_SMTPD)

count_for() { # variant
    local base=2000
    [ "$1" = reuse ] && base=6000
    python3 -c "print(max(50, int($base * $SCALE)))"
}
cpu_of() { # target
    if [ "$1" = postfix ]; then group_stats "$PFX_PID" | awk '{print $1}'; else cpu_ticks "$MX_PID"; fi
}

# one run: appends "target variant sessions messages cpu_ticks {json}" to $RES
run_one() { # target variant sessions
    local t=$1 v=$2 s=$3 n c0 c1 out flags=()
    n=$(count_for "$v")
    case "$v" in
        conn-resume) flags=(--per-conn 1) ;;
        conn-noresume) flags=(--per-conn 1 --no-resume) ;;
        reuse) flags=(--per-conn 0) ;;
    esac
    if [ "$t" = mxplain ]; then flags+=(--no-tls); else flags+=(--ca "$W/certs/ca.crt"); fi
    c0=$(cpu_of "$t")
    out=$("$TLS_LOAD" load --target "127.0.0.1:${PORT[$t]}" --sessions "$s" --messages "$n" \
        --size "$SIZE" --source 127.0.0.1 --max-time 600s "${flags[@]}") \
        || { echo "bench: tls_load against $t failed" >&2; exit 1; }
    if [ "$t" = postfix ]; then pfx_drained "$W/pfx" 300 || true; fi
    c1=$(cpu_of "$t")
    echo "$t $v $s $n $((c1 - c0)) $out" >> "$RES"
    python3 -c '
import json, sys
r = json.loads(sys.argv[2])
r = {k: float("nan") if v is None else v for k, v in r.items()}  # no message: no latency
print("  %s: %.0f msg/s, p50 %.2f ms, p99 %.2f ms, %d/%d resumed, %d failed" % (
    sys.argv[1], r["rate"], r["p50_ms"], r["p99_ms"], r["resumed"], r["handshakes"], r["failed"]))' \
        "rep $rep sessions=$s $v $t" "$out" >&2
}

echo "bench: tls (REPS=$REPS SCALE=$SCALE)" >&2
# warm-up, not recorded: Postfix spawns its smtpd processes, both fill their caches
for t in "${TARGETS[@]}"; do
    warm=(--no-tls)
    [ "$t" = mxplain ] || warm=(--ca "$W/certs/ca.crt")
    "$TLS_LOAD" load --target "127.0.0.1:${PORT[$t]}" --sessions 10 --messages 100 \
        --source 127.0.0.1 "${warm[@]}" >/dev/null || { echo "bench: warm-up of $t failed" >&2; exit 1; }
done
pfx_drained "$W/pfx" 60 || true
RES="$W/tls-results.txt"; : > "$RES"
for rep in $(seq 1 "$REPS"); do
    for s in "${SESSION_LIST[@]}"; do
        for v in conn-resume conn-noresume reuse; do
            nt=${#TARGETS[@]}
            for k in $(seq 0 $((nt - 1))); do
                t=${TARGETS[$(( (k + rep) % nt ))]}
                # plaintext has no resumption to switch off: one conn row serves both
                [ "$t" = mxplain ] && [ "$v" = conn-noresume ] && continue
                run_one "$t" "$v" "$s"
            done
        done
    done
done

python3 - "$RES" "$REPS" "$SIZE" "$CLK_TCK" "${PFX_DELIVERY:-relay}" <<'PY'
import collections, json, statistics, sys
res, reps, size, tck, delivery = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
runs = collections.defaultdict(list)
for line in open(res):
    t, v, s, n, cpu, js = line.split(" ", 5)
    r = json.loads(js)
    r = {k: float("nan") if v is None else v for k, v in r.items()}  # no message: no latency
    r["cpu_us"] = int(cpu) / tck / max(1, r["ok"]) * 1e6
    runs[(t, v, int(s))].append(r)
def med(key, field):
    v = [r[field] for r in runs.get(key, []) if r.get(field) is not None]
    return statistics.median(v) if v else float("nan")
def resumed(key):
    rs = runs.get(key, [])
    h = sum(r["handshakes"] for r in rs)
    return f"{sum(r['resumed'] for r in rs) / h * 100:.0f} %" if h else "n/a"
failed = sum(r["failed"] for rs in runs.values() for r in rs)
print(f"Medians of {reps} repetition(s); {size // 1024} KiB messages; msg/s; latency per message p50/p99 in ms;")
print(f"CPU us per message (mxguard: its process; Postfix: the whole instance, {delivery}ing to the sink).\n")
print("| sessions | connection | TLS resumption | mxguard plaintext | mxguard STARTTLS | Postfix STARTTLS | mxguard/Postfix | p50/p99 mxguard | p50/p99 Postfix | resumed mxguard/Postfix | CPU mxguard | CPU Postfix |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
label = {"conn-resume": ("1 msg/conn", "on"), "conn-noresume": ("1 msg/conn", "off"), "reuse": ("many/conn", "n/a")}
for s in sorted({k[2] for k in runs}):
    for v in ("conn-resume", "conn-noresume", "reuse"):
        plain_v = "conn-resume" if v == "conn-noresume" else v
        p, m, f = med(("mxplain", plain_v, s), "rate"), med(("mxguard", v, s), "rate"), med(("postfix", v, s), "rate")
        ratio = f"{m / f:.2f}x" if f == f and f > 0 else "n/a"
        lat = lambda t: " / ".join("n/a" if x != x else f"{x:.2f}" for x in (med((t, v, s), "p50_ms"), med((t, v, s), "p99_ms")))
        conn, res_ = label[v]
        resum = "n/a" if v == "reuse" else f"{resumed(('mxguard', v, s))} / {resumed(('postfix', v, s))}"
        print(f"| {s} | {conn} | {res_} | {p:.0f} | {m:.0f} | {f:.0f} | {ratio} | {lat('mxguard')} | {lat('postfix')} | {resum} | {med(('mxguard', v, s), 'cpu_us'):.0f} | {med(('postfix', v, s), 'cpu_us'):.0f} |")
print(f"\nFailed messages over all runs: {failed}.")
PY
