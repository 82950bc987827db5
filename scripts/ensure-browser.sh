#!/usr/bin/env bash
# Make sure Debian's Chromium is at /usr/bin/chromium for the browser tests (tests/test_browser.py).
# Never fails the build: without apt the browser tests skip and say why.
exec bash "$(dirname "$0")/ensure-deb.sh" /usr/bin/chromium chromium "browser tests will be skipped"
