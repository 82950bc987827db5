#!/usr/bin/env bash
# Make sure the real Fashion-MNIST is present and verified. Idempotent; quiet on the happy path
# except one line. Usage: scripts/ensure-data.sh PYTHON
set -euo pipefail
PY="${1:-python3}"

if "$PY" -m fmnist data info >/dev/null 2>&1; then
    echo "data: Fashion-MNIST present and verified"
    exit 0
fi

# Debian's dataset-fashion-mnist is the offline source; only try apt where it exists and
# system packages are wanted (`make ... SYSTEM_PACKAGES=no` downloads instead).
if [ "${SYSTEM_PACKAGES:-yes}" != no ] && command -v apt-get >/dev/null 2>&1 \
        && ! dpkg -s dataset-fashion-mnist >/dev/null 2>&1; then
    SUDO=""
    if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo -n"; fi
    # `apt-get update` only when the package index does not know the package yet.
    if ! apt-cache show dataset-fashion-mnist >/dev/null 2>&1; then
        $SUDO apt-get update -qq >/dev/null || true
    fi
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null \
        || echo "data: could not install dataset-fashion-mnist with apt; trying a download" >&2
fi

# Finds the Debian copy if apt just installed it, else downloads into the user cache; on
# failure it prints one line saying what was tried and how to fix it.
"$PY" -m fmnist data fetch
