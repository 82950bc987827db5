#!/usr/bin/env bash
# ensure-deb.sh BINARY PACKAGE WHAT: make sure Debian's PACKAGE provides BINARY (e.g.
# /usr/bin/chromium for the browser tests, /usr/bin/wrk for the load benchmark). Idempotent and
# quiet. Never fails the build: without apt (or without rights to use it), or with
# SYSTEM_PACKAGES=no in the environment (`make test SYSTEM_PACKAGES=no`), it says that WHAT
# cannot run, and exits 0.
set -u
BINARY=$1 PACKAGE=$2 WHAT=$3
NAME=$(basename "$0" .sh)
LOG=/tmp/$NAME-$PACKAGE.log

[ -x "$BINARY" ] && exit 0

if [ "${SYSTEM_PACKAGES:-yes}" = no ]; then
    echo "$NAME: SYSTEM_PACKAGES=no: not installing $PACKAGE; $WHAT." >&2
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "$NAME: apt-get not found; $WHAT (install $PACKAGE at $BINARY)." >&2
    exit 0
fi

SUDO=""
if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO="sudo -n"
    else
        echo "$NAME: not root and no passwordless sudo; $WHAT." >&2
        exit 0
    fi
fi

install() {
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$PACKAGE" \
        >"$LOG" 2>&1
}

# Try without refreshing the package lists first; refresh only if that fails.
if ! install; then
    $SUDO apt-get update -qq >>"$LOG" 2>&1 || true
    install || true
fi

if [ -x "$BINARY" ]; then
    echo "$NAME: installed $PACKAGE."
else
    echo "$NAME: could not install $PACKAGE (see $LOG); $WHAT." >&2
fi
