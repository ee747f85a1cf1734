#!/usr/bin/env bash
# Installs the headless browser the web-app test drives (Debian's Chromium),
# when it is missing and we are root with apt-get. Safe to re-run: does nothing
# when /usr/bin/chromium is already there. Without root or apt-get it says what
# to do and exits 0, so a user install still works (the browser test then skips
# locally; under CI it fails, as it should).
set -euo pipefail
CHROMIUM=${DERMALENS_CHROMIUM:-/usr/bin/chromium}   # the path tests/test_browser.py uses

if [ -x "$CHROMIUM" ]; then
  echo "chromium: found $CHROMIUM"
  exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "chromium: $CHROMIUM missing; install it as root with: apt-get update && apt-get install -y chromium" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update
# No recommends (desktop extras); a font so pages and screenshots show text.
apt-get install -y --no-install-recommends chromium fonts-dejavu-core
"$CHROMIUM" --version
