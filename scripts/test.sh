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

if [ "$(id -u)" = 0 ]; then
    # idempotent: checks every package with dpkg and installs only what is missing
    bash scripts/install-test-deps.sh >&2
else
    missing=()
    for c in postfix smtp-sink smtp-source swaks python3 haproxy redis-server redis-cli prometheus \
             curl openssl saslpasswd2 m4 unshare; do
        command -v "$c" >/dev/null 2>&1 || missing+=("$c")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "test.sh: missing ${missing[*]} and not root: run 'sudo bash scripts/install-test-deps.sh'" >&2
        if [ "${CI:-}" = true ]; then exit 1; fi
    fi
fi

profile=()
if [ "${MXGUARD_TEST_PROFILE:-debug}" = release ]; then profile=(--release); fi
exec cargo test "${profile[@]}" --all-targets --no-fail-fast "$@"
