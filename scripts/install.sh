#!/usr/bin/env bash
# Installs everything dermalens needs into a virtual environment: system
# packages (where apt-get is available and we are root), then the Python
# package with its extras. Safe to re-run.
set -euo pipefail
PYTHON=${1:-python3}
VENV=${2:-.venv}

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q -e '.[all]'
# The web-app browser test drives Debian's Chromium (installed when root + apt-get).
bash "$(dirname "$0")/install_browser.sh"
"$VENV/bin/python" -c "import dermalens, torch, timm, lightning; print('dermalens', dermalens.__version__, 'torch', torch.__version__)"
