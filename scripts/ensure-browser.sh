#!/usr/bin/env bash
# Make sure Debian's Chromium is at /usr/bin/chromium for the browser tests (tests/test_browser.py).
# Idempotent and quiet. Never fails the build: without apt (or without rights to use it) the
# browser tests skip and say why.
set -u

BROWSER=/usr/bin/chromium
[ -x "$BROWSER" ] && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure-browser: apt-get not found; browser tests will be skipped (install chromium at $BROWSER)." >&2
    exit 0
fi

SUDO=""
if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO="sudo -n"
    else
        echo "ensure-browser: not root and no passwordless sudo; browser tests will be skipped." >&2
        exit 0
    fi
fi

install() {
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium \
        >/tmp/ensure-browser.log 2>&1
}

# Try without refreshing the package lists first; refresh only if that fails.
if ! install; then
    $SUDO apt-get update -qq >>/tmp/ensure-browser.log 2>&1 || true
    install || true
fi

if [ -x "$BROWSER" ]; then
    echo "ensure-browser: installed $("$BROWSER" --version 2>/dev/null || echo chromium)."
else
    echo "ensure-browser: could not install chromium (see /tmp/ensure-browser.log); browser tests will be skipped." >&2
fi
exit 0
