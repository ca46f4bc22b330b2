# shellcheck shell=bash
# Helpers shared by benches/bench.sh and its modes (sourced, never run by itself):
# ports, readiness, process accounting, and the processes every mode starts (the
# smtp-sink, HAProxy, mxguard, a private Postfix, the tls_load instrument). Loopback
# only; every wait is bounded; every process started here is recorded in PIDS and
# stopped by PID.

export PATH="$PATH:/usr/sbin:/sbin"
PIDS=()
W=
CLK_TCK=$(getconf CLK_TCK)
TARGET_DIR=${CARGO_TARGET_DIR:-target}

# a work directory, removed on exit (KEEP=1 keeps it), and the stop-everything trap
bench_workdir() {
    W=$(mktemp -d /tmp/mxg-bench.XXXXXX)
    chmod 755 "$W"
    trap cleanup EXIT
}
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do
        for _ in $(seq 1 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.05; done
        kill -KILL "$p" 2>/dev/null || true
    done
    if [ -n "${KEEP:-}" ]; then
        echo "bench: kept $W" >&2
    elif [ -n "$W" ]; then
        rm -rf "$W"
    fi
}
# stops one process started here (TERM, bounded wait, then KILL) and forgets it
stop_pid() { # pid [seconds]
    local p=$1 n=$(( ${2:-10} * 20 )) q keep=()
    kill -TERM "$p" 2>/dev/null || true
    for _ in $(seq 1 "$n"); do kill -0 "$p" 2>/dev/null || break; sleep 0.05; done
    kill -KILL "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
    for q in "${PIDS[@]}"; do [ "$q" = "$p" ] || keep+=("$q"); done
    PIDS=("${keep[@]}")
}

require_tools() {
    local t
    for t in "$@"; do
        command -v "$t" >/dev/null || { echo "bench: $t missing (bash scripts/install-test-deps.sh)" >&2; exit 1; }
    done
}

# A free port for a listener, below the ephemeral range: thousands of outgoing
# connections (the flood, the proxies' upstream sessions) take ephemeral ports, and a
# Postfix restarted on a port one of them holds fails with "Address already in use".
free_port() {
    python3 - <<'PY'
import random, socket
low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
for _ in range(200):
    port = random.randrange(10000, max(10001, low))
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
        print(port)
        break
    except OSError:
        continue
    finally:
        s.close()
else:
    raise SystemExit("bench: no free port below the ephemeral range")
PY
}
# readiness: a 220 greeting (bounded; more seconds for slow starts such as valgrind)
wait_banner() { # port [seconds]
    python3 - "$1" "${2:-10}" <<'PY'
import socket, sys, time
port, limit = int(sys.argv[1]), float(sys.argv[2])
deadline = time.time() + limit
while time.time() < deadline:
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=max(2, limit / 5))
        line = s.makefile("rb").readline()
        if line.startswith(b"220 "):
            s.sendall(b"QUIT\r\n"); s.close(); sys.exit(0)
        s.close()
    except OSError:
        pass
    time.sleep(0.02)  # poll interval while the server is not yet listening
sys.exit("bench: nothing greets on port %d" % port)
PY
}
# waits (bounded) until FILE has a line matching REGEX
wait_line() { # file regex seconds
    local n=$(( $3 * 20 ))
    for _ in $(seq 1 "$n"); do grep -qE "$2" "$1" 2>/dev/null && return 0; sleep 0.05; done
    return 1
}
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
status_kib() { awk -v f="$2:" '$1 == f {print $2}' "/proc/$1/status"; } # pid VmRSS|VmHWM
# "cpu_ticks pss_kib processes" summed over a process group (a Postfix instance: master
# and its children); CPU includes children already reaped (cutime + cstime), memory is
# the proportional set size, so that libraries shared by many processes count once
group_stats() { # pgid
    python3 - "$1" <<'PY'
import os, sys
pgid = int(sys.argv[1]); cpu = pss = n = 0
for d in os.listdir("/proc"):
    if not d.isdigit():
        continue
    try:
        stat = open(f"/proc/{d}/stat").read()
        f = stat[stat.rindex(")") + 2:].split()
        if int(f[2]) != pgid:
            continue
        cpu += sum(int(x) for x in f[11:15])
        for line in open(f"/proc/{d}/smaps_rollup"):
            if line.startswith("Pss:"):
                pss += int(line.split()[1])
        n += 1
    except (OSError, ValueError):
        pass
print(cpu, pss, n)
PY
}

# The release binary, copied into the work directory: a later `cargo bench` (or
# `cargo test --release`) links target/release/mxguard to its own build, whose
# dependencies carry the dev-dependencies' features. Call after build_tls_load.
build_mxguard() {
    echo "bench: building mxguard (release)" >&2
    cargo build --release --bin mxguard >&2
    [ -x "$TARGET_DIR/release/mxguard" ] || { echo "bench: $TARGET_DIR/release/mxguard not built" >&2; exit 1; }
    mkdir -p "$W/bin"
    cp "$TARGET_DIR/release/mxguard" "$W/bin/mxguard"
    MXGUARD="$W/bin/mxguard"
}
# the load generator and flooder (benches/tls_load): a bench target, not in the binary
build_tls_load() {
    echo "bench: building the tls_load bench (release)" >&2
    TLS_LOAD=$(cargo bench --bench tls_load --no-run --message-format=json 2>/dev/null | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "tls_load" and m.get("executable"):
        print(m["executable"])')
    [ -x "$TLS_LOAD" ] || { echo "bench: tls_load not built (cargo bench --bench tls_load --no-run)" >&2; exit 1; }
}

start_sink() { # -> SINK_PORT SINK_PID
    SINK_PORT=$(free_port)
    smtp-sink -4 -a -u nobody -h sink.test "127.0.0.1:$SINK_PORT" 4096 >/dev/null 2>"$W/sink.err" &
    SINK_PID=$!; PIDS+=("$SINK_PID")
    wait_banner "$SINK_PORT"
}

# HAProxy in TCP mode in front of the sink (the config of the default matrix); an
# optional wrapper command (valgrind …) runs it
start_haproxy() { # [wrapper…] -> HAP_PORT HAP_PID
    HAP_PORT=$(free_port)
    printf '%s\n' "global" "    maxconn 9000" "    nbthread 2" "defaults" "    mode tcp" \
        "    timeout connect 5s" "    timeout client 120s" "    timeout server 120s" \
        "frontend smtp" "    bind 127.0.0.1:$HAP_PORT" "    default_backend sink" \
        "backend sink" "    server sink 127.0.0.1:$SINK_PORT" > "$W/haproxy.cfg"
    "$@" haproxy -f "$W/haproxy.cfg" -db >"$W/haproxy.log" 2>&1 &
    HAP_PID=$!; PIDS+=("$HAP_PID")
    wait_banner "$HAP_PORT" "${START_WAIT:-10}" || { cat "$W/haproxy.log" >&2; exit 1; }
}

# mxguard in front of the sink, its YAML config on stdin ("{port}" is replaced by its
# listening port); an optional wrapper command (valgrind …) runs it
start_mx() { # name [wrapper…] -> MX_PORT MX_PID
    local dir="$W/$1"; shift
    mkdir -p "$dir/rules" "$dir/state"
    MX_PORT=$(free_port)
    sed "s/{port}/$MX_PORT/g" > "$dir/mxguard.yaml"
    RUST_LOG=${RUST_LOG:-warn} "$@" "$MXGUARD" run --config "$dir/mxguard.yaml" \
        --listen "127.0.0.1:$MX_PORT" --upstream "127.0.0.1:$SINK_PORT" --rules "$dir/rules" \
        --state "$dir/state" --hostname mx.test >"$dir/mxguard.log" 2>&1 &
    MX_PID=$!; PIDS+=("$MX_PID")
    wait_banner "$MX_PORT" "${START_WAIT:-10}" || { cat "$dir/mxguard.log" >&2; exit 1; }
}

# A test CA and a leaf for mx.test, localhost and 127.0.0.1 (ECDSA P-256), for mxguard
# and Postfix alike
make_certs() { # dir
    local d=$1
    mkdir -p "$d"
    (
        cd "$d"
        openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out ca.key 2>/dev/null
        openssl req -x509 -new -key ca.key -sha256 -days 30 -subj "/CN=mxguard bench CA" \
            -addext "basicConstraints=critical,CA:TRUE" \
            -addext "keyUsage=critical,keyCertSign,cRLSign" -out ca.crt 2>/dev/null
        openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out leaf.key 2>/dev/null
        openssl req -new -key leaf.key -subj "/CN=mx.test" -out leaf.csr 2>/dev/null
        printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature" \
            "extendedKeyUsage=serverAuth" "subjectAltName=DNS:mx.test,DNS:localhost,IP:127.0.0.1" \
            > leaf.ext
        openssl x509 -req -in leaf.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 30 \
            -sha256 -extfile leaf.ext -out leaf.crt 2>/dev/null
        cat leaf.crt ca.crt > leaf-chain.crt
        chmod 644 ./*.crt
        chmod 600 ./*.key
    )
    [ -s "$d/leaf-chain.crt" ] || { echo "bench: openssl could not make the test certificates" >&2; exit 1; }
}

# A private Postfix (nothing in /etc/postfix; own queue and log file; no syslog) that
# relays everything from mynetworks (127.0.0.1 only: the legitimate load) to the sink:
#   SMTPD_PORT    smtpd offering STARTTLS with the certificate of make_certs
#   PSCREEN_PORT  (optional) postscreen with the pregreet test enforced, mynetworks
#                 allowed at once, handing clients to "smtpd pass"
# PFX_DELIVERY=discard discards mail instead of relaying it (no onward SMTP client).
# Limits stay Postfix's defaults (100 processes per service, 50 connections per client).
pfx_create() { # dir smtpd_port pscreen_port|"" certdir
    local d=$1 smtpd=$2 pscreen=$3 certs=$4 delivery
    [ -n "$d" ] && [ -n "$smtpd" ] && [ -n "$certs" ] || { echo "bench: pfx_create: missing argument" >&2; exit 1; }
    mkdir -p "$d/etc" "$d/spool" "$d/data"
    chmod 755 "$d" "$d/spool"
    chown postfix:postfix "$d/data"
    chmod 700 "$d/data"
    : > "$d/maillog"
    if [ "${PFX_DELIVERY:-relay}" = discard ]; then
        delivery=$'default_transport = discard:bench\nrelay_transport = discard:bench'
    else
        delivery="relayhost = [127.0.0.1]:$SINK_PORT"
    fi
    local main=(
        "compatibility_level = 3.6"
        "queue_directory = $d/spool"
        "data_directory = $d/data"
        "mail_owner = postfix"
        "setgid_group = postdrop"
        "myhostname = mx.test"
        "mydomain = test"
        "myorigin = \$myhostname"
        "mydestination ="
        "local_recipient_maps ="
        "alias_maps ="
        "alias_database ="
        "inet_interfaces = 127.0.0.1"
        "inet_protocols = ipv4"
        "mynetworks = 127.0.0.1/32"
        "smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination"
        "$delivery"
        "smtp_tls_security_level = none"
        "smtp_dns_support_level = disabled"
        "biff = no"
        "maillog_file = $d/maillog"
        "maillog_file_prefixes = $d"
        "# no reverse DNS for clients: nothing here resolves 127.x names, and a lookup per"
        "# connection would measure the resolver's timeout, not Postfix"
        "smtpd_peername_lookup = no"
        "local_header_rewrite_clients ="
        "# the inflow throttle would hold smtpd below what it can do whenever qmgr lags"
        "in_flow_delay = 0"
        "smtpd_banner = \$myhostname ESMTP"
        "smtpd_tls_security_level = may"
        "smtpd_tls_chain_files = $certs/leaf.key, $certs/leaf-chain.crt"
        "smtpd_tls_session_cache_database = btree:\${data_directory}/smtpd_scache"
        "postscreen_access_list = permit_mynetworks"
        "postscreen_greet_action = enforce"
        "postscreen_cache_map = btree:\${data_directory}/postscreen_cache"
    )
    printf '%s\n' "${main[@]}" > "$d/etc/main.cf"
    # a mode's own main.cf lines (BENCH=filters: the milter)
    [ -z "${PFX_MAIN_EXTRA:-}" ] || printf '%s\n' "$PFX_MAIN_EXTRA" >> "$d/etc/main.cf"
    local master=("127.0.0.1:$smtpd inet n - n - - smtpd")
    if [ -n "$pscreen" ]; then
        master+=(
            "127.0.0.1:$pscreen inet n - n - 1 postscreen"
            "smtpd pass - - n - - smtpd"
            "dnsblog unix - - n - 0 dnsblog"
            "tlsproxy unix - - n - 0 tlsproxy"
        )
    fi
    master+=(
        "pickup unix n - n 60 1 pickup"
        "cleanup unix n - n - 0 cleanup"
        "qmgr unix n - n 300 1 qmgr"
        "tlsmgr unix - - n 1000? 1 tlsmgr"
        "rewrite unix - - n - - trivial-rewrite"
        "bounce unix - - n - 0 bounce"
        "defer unix - - n - 0 bounce"
        "trace unix - - n - 0 bounce"
        "verify unix - - n - 1 verify"
        "flush unix n - n 1000? 0 flush"
        "proxymap unix - - n - - proxymap"
        "proxywrite unix - - n - 1 proxymap"
        "smtp unix - - n - - smtp"
        "relay unix - - n - - smtp"
        "showq unix n - n - - showq"
        "error unix - - n - - error"
        "retry unix - - n - - error"
        "discard unix - - n - - discard"
        "anvil unix - - n - 1 anvil"
        "scache unix - - n - 1 scache"
        "postlog unix-dgram n - n - 1 postlogd"
    )
    printf '%s\n' "${master[@]}" > "$d/etc/master.cf"
    # Postfix pauses on files changed in the last seconds: backdate the instance's own
    touch -d '-10 seconds' "$d/etc/main.cf" "$d/etc/master.cf"
    postfix -c "$d/etc" check >&2 || { echo "bench: postfix -c $d/etc check failed" >&2; exit 1; }
}
# master in its own session: its SIGTERM handler signals its process group, which must
# be the instance's, not this script's. PFX_PID = master's PID = the group's id.
pfx_start() { # dir port-to-wait-for
    setsid /usr/lib/postfix/sbin/master -c "$1/etc" -d -e 3600 >"$1/master.out" 2>&1 &
    PFX_PID=$!; PIDS+=("$PFX_PID")
    wait_banner "$2" 30 || {
        echo "bench: Postfix ($1) did not greet on port $2; master.out and the end of its log:" >&2
        cat "$1/master.out" >&2; tail -20 "$1/maillog" >&2; exit 1; }
}
pfx_stop() {
    local n
    stop_pid "$PFX_PID" 20
    for _ in $(seq 1 200); do
        n=$(group_stats "$PFX_PID" | awk '{print $3}')
        [ "$n" = 0 ] && return 0
        sleep 0.05
    done
    echo "bench: Postfix processes of group $PFX_PID still running" >&2
}
# the queue is empty, everything accepted was relayed (bounded)
pfx_drained() { # dir seconds
    local n=$(( $2 * 10 ))
    for _ in $(seq 1 "$n"); do
        if [ -z "$(find "$1/spool/incoming" "$1/spool/active" "$1/spool/maildrop" \
                "$1/spool/deferred" -type f 2>/dev/null | head -1)" ]; then
            return 0
        fi
        sleep 0.1
    done
    echo "bench: Postfix queue in $1 not empty after $2 s" >&2
    return 1
}
