#!/usr/bin/env bash
# THE test command: installs the real components when missing (as root), then runs every
# test against them. Extra arguments go to `cargo test` (e.g. `-- --nocapture`).
#
# Under CI=true a missing component fails its tests; it never skips them.
# MXGUARD_TEST_PROFILE=release runs the tests against an optimised build (default: debug,
# which compiles much faster; the 1,000-session and 50 MB tests take seconds even so).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/sbin:/sbin"

need_cmds=(postfix smtp-sink smtp-source swaks python3 haproxy redis-server prometheus curl openssl saslpasswd2 m4 unshare systemd-analyze)
missing=()
for c in "${need_cmds[@]}"; do
    command -v "$c" >/dev/null 2>&1 || missing+=("$c")
done
[ -x /usr/lib/postfix/sbin/master ] || missing+=(postfix-master)
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        echo "test.sh: missing ${missing[*]}: installing" >&2
        bash scripts/install-test-deps.sh
    else
        echo "test.sh: missing ${missing[*]} and not root: run 'sudo bash scripts/install-test-deps.sh'" >&2
        if [ "${CI:-}" = true ]; then exit 1; fi
    fi
fi

profile=()
if [ "${MXGUARD_TEST_PROFILE:-debug}" = release ]; then profile=(--release); fi
exec cargo test "${profile[@]}" --all-targets "$@"
