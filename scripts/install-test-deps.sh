#!/usr/bin/env bash
# Installs the real components the tests and the benchmark use, on Debian 12, as root.
# Idempotent: installs only what is missing. Starts no daemon and writes no
# /etc/postfix/main.cf (debconf "No configuration"): the tests run private instances.
set -euo pipefail

if [ "$(id -u)" != 0 ]; then
    echo "install-test-deps: must run as root" >&2
    exit 1
fi

PACKAGES=(
    postfix                 # upstream MTA, smtp-sink, smtp-source
    swaks libnet-ssleay-perl libio-socket-ssl-perl libauthen-sasl-perl
    curl python3 openssl ca-certificates
    msmtp                   # a real client that asks for DSN (--dsn-notify)
    haproxy                 # benchmark baseline (TCP mode)
    strace valgrind         # benchmark counts: system calls and instructions per message
    redis-server            # shared store tests (also runs the sentinels: redis-server --sentinel)
    redis-tools             # redis-cli --cluster create (Redis Cluster tests)
    prometheus              # metrics tests scrape mxguard with a real Prometheus
    dnsmasq-base            # DNS for policy checks (binary only, no service)
    sasl2-bin libsasl2-modules   # SASL users for the submission (AUTH) tests
    m4 libwrap0 libdb5.3 libldap-2.5-0 libnsl2 libsasl2-2   # Sendmail (unpacked by the tests)
    util-linux              # unshare, flock (the Sendmail harness)
    # content filters (tests/filters_clients.rs), run as private instances; no freshclam:
    # clamd loads a two-line EICAR signature database written by the test
    clamav-daemon clamav-milter opendkim opendkim-tools opendmarc rspamd
    systemd                 # systemd-analyze verify for the unit file test
    procps iproute2 util-linux
    sasl2-bin libsasl2-modules   # AUTH at the private Postfix (saslpasswd2, sasldb)
    # Sendmail upstream tests: the sendmail debs are fetched with `apt-get download` and
    # unpacked (installing sendmail would remove postfix); these are their runtime needs
    m4 libwrap0 libdb5.3 libldap-2.5-0 libnsl2 libsasl2-2
)

missing=()
for p in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$p")
    fi
done
if [ ${#missing[@]} -eq 0 ]; then
    echo "install-test-deps: all present"
    exit 0
fi
echo "install-test-deps: installing ${missing[*]}"

# No maintainer script may start a daemon (redis, haproxy, clamd, freshclam, rspamd,
# opendkim, opendmarc) while we install: policy-rc.d must exit 101. A different one is
# set aside and put back afterwards.
added_policy=
saved_policy=
if [ ! -e /usr/sbin/policy-rc.d ] || ! grep -qx 'exit 101' /usr/sbin/policy-rc.d; then
    if [ -e /usr/sbin/policy-rc.d ]; then
        saved_policy=/usr/sbin/policy-rc.d.mxguard-saved
        mv /usr/sbin/policy-rc.d "$saved_policy"
    fi
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    added_policy=1
fi
cleanup() {
    if [ -n "$added_policy" ]; then rm -f /usr/sbin/policy-rc.d; fi
    if [ -n "$saved_policy" ]; then mv "$saved_policy" /usr/sbin/policy-rc.d; fi
}
trap cleanup EXIT

export DEBIAN_FRONTEND=noninteractive
apt-get update
echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
apt-get install -y --no-install-recommends "${missing[@]}"
echo "install-test-deps: done"
