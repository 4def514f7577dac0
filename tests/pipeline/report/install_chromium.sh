#!/bin/sh
# Headless Chromium for the report tests (tests/pipeline/test_report.py), from Debian packages.
# Called by `make setup`; safe to rerun. Without root it says what to run instead.
set -e
if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    SUDO=sudo
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_chromium.sh: no apt-get here; install Chromium yourself (the report browser tests skip without it)" >&2
    exit 0
fi
$SUDO apt-get update -q
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q chromium
