#!/bin/sh
# Installs the system tools some tests run (promtool and prometheus: the Debian/Ubuntu package
# `prometheus`) where this user may: as root, or with passwordless sudo. Elsewhere it says in
# one line that their tests will be skipped (fail under CI=true) and how to install them.
# Never fails its caller. Usage: sh deploy/install_test_tools.sh   (`make test` calls it)
set -eu

HINT="sudo apt-get install prometheus"

missing() {
    # $1: why nothing was installed.
    tests=skipped
    if [ "${CI:-}" = true ]; then tests=fail; fi
    echo "event=test_tools_missing tools=prometheus,promtool reason=$1 tests=$tests install=\"$HINT\"" >&2
    exit 0
}

install() {
    # $1: the command prefix that runs apt-get as root ("" as root, "sudo -n" otherwise).
    if $1 env DEBIAN_FRONTEND=noninteractive apt-get update -qq \
        && $1 env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; then
        echo "event=test_tools_installed package=prometheus"
    else
        missing apt_get_failed
    fi
}

if command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    missing no_apt_get
fi
if [ "$(id -u)" = 0 ]; then
    install ""
elif command -v sudo >/dev/null 2>&1 && sudo -n true >/dev/null 2>&1; then
    install "sudo -n"
else
    missing not_root_no_passwordless_sudo
fi
