#!/bin/bash
# sendmail-instance.sh - a private Sendmail 8.17 on a loopback port for mxguard's tests,
# without installing the sendmail packages (they conflict with postfix).
#
#   sendmail-instance.sh create DIR PORT   # unpack the debs once (cached), write sendmail.cf and maps
#   sendmail-instance.sh run DIR           # exec sendmail -bD in the foreground (the harness owns it)
#
# Needs root, m4 and sendmail's runtime libraries (scripts/install-test-deps.sh installs them).
# Accepts mail for alice/bob/carol@test.example (others: 550 5.1.1 at RCPT) and anything
# @any.example; access-map rejections at MAIL and RCPT as the Postfix harness has them.
# Delivered mail: DIR/mail/<n>.eml (+ .env), LF line ends, written by DIR/bin/deliver.
set -euo pipefail
die() { echo "sendmail-instance: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "must run as root"
cmd=${1:-}; dir=${2:-}
[ -n "$cmd" ] && [ -n "$dir" ] || die "usage: $0 create|run DIR [PORT]"
case "$dir" in /*) ;; *) dir="$PWD/$dir" ;; esac
SM_ROOT=${SM_ROOT:-/tmp/mxguard-sendmail-root}
SM=$SM_ROOT/usr/libexec/sendmail/sendmail
MAKEMAP=$SM_ROOT/usr/libexec/sendmail/makemap
# Sendmail qualifies its host name before reading sendmail.cf and sleeps 60 s if it cannot:
# run it in a private UTS namespace whose host name is an FQDN.
smrun() { unshare --uts sh -c 'hostname sm.test && exec "$@"' smrun "$SM" -C "$dir/sendmail.cf" "$@"; }

unpack() {
    # Parallel tests may create instances at once: one unpack, under a lock.
    exec 9>"$SM_ROOT.lock"
    flock 9
    if [ ! -x "$SM" ]; then
        command -v m4 >/dev/null || die "apt-get install m4"
        local tmp; tmp=$(mktemp -d)
        chown _apt "$tmp" 2>/dev/null || true
        # A machine whose package lists were never fetched cannot download: fetch them once.
        (cd "$tmp" && apt-get download -q sendmail-bin sendmail-base sendmail-cf >/dev/null 2>&1) \
            || { apt-get update -q >/dev/null && (cd "$tmp" && apt-get download -q sendmail-bin sendmail-base sendmail-cf >/dev/null); } \
            || die "apt-get download of the sendmail packages failed"
        rm -rf "$SM_ROOT.new"
        mkdir -p "$SM_ROOT.new"
        for d in "$tmp"/*.deb; do dpkg-deb -x "$d" "$SM_ROOT.new"; done
        rm -rf "$tmp" "$SM_ROOT"
        mv "$SM_ROOT.new" "$SM_ROOT"
        if ldd "$SM" | grep 'not found'; then die "missing libraries for sendmail"; fi
    fi
    flock -u 9
}

create() {
    local port=${3:-}; [ -n "$port" ] || die "create needs PORT"
    [ "$port" != 25 ] || die "refusing port 25"
    [ ! -e "$dir/sendmail.cf" ] || die "$dir already has an instance"
    unpack
    local cf=$SM_ROOT/usr/share/sendmail/cf
    mkdir -p "$dir"/{mqueue,mail,bin,dev}
    chmod 755 "$dir"; chmod 700 "$dir/mqueue"
    chown nobody:"$(id -gn nobody)" "$dir/mail"
    echo "$port" > "$dir/port"
    cp "$SM_ROOT/etc/mail/helpfile" "$dir/helpfile"
    printf 'hosts\tfiles\naliases\tfiles\n' > "$dir/service.switch"   # never ask DNS/NIS
    printf '127.0.0.1\tsm.test localhost\n' > "$dir/hosts"
    # bounces/double bounces would otherwise land in mail/ as extra files
    printf 'postmaster: /dev/null\nMAILER-DAEMON: /dev/null\nroot: /dev/null\n' > "$dir/aliases"
    : > "$dir/statistics"
    # virtusertable: known users -> local mailer; unknown -> 550 5.1.1 at RCPT
    cat > "$dir/virtusertable" <<'EOF'
alice@test.example	alice
bob@test.example	bob
carol@test.example	carol
tempfail@test.example	tempfail
@test.example	error:nouser 550 5.1.1 User unknown
@any.example	catchall
EOF
    # access: per-stage rejections like the Postfix upstream (MAIL and RCPT stage)
    cat > "$dir/access" <<'EOF'
From:reject-mail@any.example	ERROR:"550 5.7.1 upstream rejects this sender at MAIL"
From:tempfail-mail@any.example	ERROR:"451 4.7.1 upstream tempfails this sender at MAIL"
To:reject-rcpt@any.example	ERROR:"550 5.7.1 upstream rejects this recipient at RCPT"
To:tempfail@test.example	ERROR:"450 4.2.0 upstream tempfails this recipient at RCPT"
To:elsewhere.example	ERROR:"550 5.7.1 Relaying denied (test entry: localhost may relay by default)"
EOF
    cat > "$dir/bin/deliver" <<'EOF'
#!/bin/sh
# local mailer: deliver OUTDIR SENDER LOCALUSER (message on stdin, LF line ends;
# LOCALUSER is the virtusertable right-hand side, e.g. "alice" or "catchall")
out=$1
tmp=$(mktemp "$out/.tmp.XXXXXX") || exit 75
cat > "$tmp" || { rm -f "$tmp"; exit 75; }
base="$out/${tmp##*.}"
printf 'sender=%s\nrecipient=%s\n' "$2" "$3" > "$base.env"
chmod 644 "$tmp" "$base.env"; mv "$tmp" "$base.eml" || exit 75
exit 0
EOF
    chmod 755 "$dir/bin" "$dir/bin/deliver"

    if [ -n "${SM_TLS_CERT:-}" ]; then   # absolute paths
        SM_TLS_CERT=$(realpath -e "$SM_TLS_CERT"); SM_TLS_KEY=$(realpath -e "${SM_TLS_KEY:?SM_TLS_KEY needed}")
        SM_TLS_CA=$(realpath -e "${SM_TLS_CA:-$SM_TLS_CERT}")
    fi
    cat > "$dir/sendmail.mc" <<EOF
divert(-1)
# private test instance. ostype gnu: linux.m4 would force procmail as the local mailer
divert(0)dnl
VERSIONID(\`private test upstream')dnl
OSTYPE(\`gnu')dnl
define(\`MAIL_SETTINGS_DIR', \`$dir/')dnl
define(\`confDOMAIN_NAME', \`sm.test')dnl
define(\`confDONT_PROBE_INTERFACES', \`True')dnl
define(\`QUEUE_DIR', \`$dir/mqueue')dnl
define(\`STATUS_FILE', \`$dir/statistics')dnl
define(\`confPID_FILE', \`$dir/sendmail.pid')dnl
define(\`HELP_FILE', \`$dir/helpfile')dnl
define(\`confHOSTS_FILE', \`$dir/hosts')dnl
define(\`confSERVICE_SWITCH_FILE', \`$dir/service.switch')dnl
define(\`confDEAD_LETTER_DROP', \`$dir/dead.letter')dnl
define(\`confEBINDIR', \`$SM_ROOT/usr/libexec/sendmail')dnl
define(\`confDEF_USER_ID', \`nobody:$(id -gn nobody)')dnl
define(\`confTO_IDENT', \`0')dnl
define(\`confTO_CONNECT', \`5s')dnl
define(\`confLOG_LEVEL', \`14')dnl
define(\`confBIND_OPTS', \`-DNSRCH -DEFNAMES')dnl
define(\`confSMTP_LOGIN_MSG', \`\$j Sendmail test-upstream')dnl
define(\`confDONT_BLAME_SENDMAIL', \`GroupWritableDirPathSafe,TrustStickyBit')dnl
define(\`LOCAL_MAILER_PATH', \`$dir/bin/deliver')dnl
define(\`LOCAL_MAILER_ARGS', \`deliver $dir/mail \$g \$u')dnl
dnl local mailer flags: default Prmn9 would add "-r sender" to argv (r), batch recipients (m),
dnl add Return-Path (P), 8->7 convert (9). Keep only n (no "From " line). -w: no passwd check.
define(\`LOCAL_MAILER_FLAGS', \`n')dnl
MODIFY_MAILER_FLAGS(\`LOCAL', \`-w')dnl
FEATURE(\`no_default_msa')dnl
FEATURE(\`nocanonify')dnl
FEATURE(\`accept_unresolvable_domains')dnl
FEATURE(\`access_db', \`hash -T<TMPF> $dir/access')dnl
dnl without this, access "To:" entries only grant RELAY and cannot reject recipients
FEATURE(\`blocklist_recipients')dnl
FEATURE(\`virtusertable', \`hash -o $dir/virtusertable')dnl
LOCAL_DOMAIN(\`test.example any.example')dnl
dnl AUTH: Sendmail would offer DIGEST-MD5/CRAM-MD5 whenever libsasl2-modules is installed;
dnl no mechanism is available for EXTERNAL without TLS client certs, so this offers none.
define(\`confAUTH_MECHANISMS', \`EXTERNAL')dnl
${SM_TLS_CERT:+define(\`confSERVER_CERT', \`$SM_TLS_CERT')dnl
define(\`confSERVER_KEY', \`${SM_TLS_KEY:-}')dnl
define(\`confCACERT', \`${SM_TLS_CA:-$SM_TLS_CERT}')dnl
define(\`confCACERT_PATH', \`/etc/ssl/certs')dnl
}DAEMON_OPTIONS(\`Family=inet, Name=MTA-test, Port=$port, Addr=127.0.0.1')dnl
MAILER(\`local')dnl
MAILER(\`smtp')dnl
EOF
    m4 -D_CF_DIR_="$cf/" "$cf/m4/cf.m4" "$dir/sendmail.mc" > "$dir/sendmail.cf" 2>"$dir/m4.err"
    [ -s "$dir/m4.err" ] && { cat "$dir/m4.err" >&2; die "m4 failed"; }
    # makemap reads a sendmail.cf for TrustedUser etc.: -C, or it wants /etc/mail/sendmail.cf.
    # It warns "World writable directory /tmp" regardless of DontBlameSendmail: filtered.
    local m
    for m in virtusertable access; do
        "$MAKEMAP" -C "$dir/sendmail.cf" hash "$dir/$m" < "$dir/$m" 2>"$dir/makemap.err" \
            || { cat "$dir/makemap.err" >&2; die "makemap $m failed"; }
        grep -v 'World writable directory /tmp$' "$dir/makemap.err" >&2 || true
    done
    rm -f "$dir/makemap.err"
    smrun -bi >/dev/null        # newaliases
    echo "created $dir (127.0.0.1:$port)"
}


case "$cmd" in
    create) create "$@" ;;
    run) exec unshare --uts sh -c 'hostname sm.test && exec "$@"' smrun "$SM" -C "$dir/sendmail.cf" -bD -q30m -L sm-test -X "$dir/smtp-trace.log" ;;
    *) die "unknown command $cmd" ;;
esac
