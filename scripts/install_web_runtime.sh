#!/usr/bin/env bash
# Installs ONNX Runtime Web, the WebAssembly runtime of the page `dermalens export --web` writes, from the
# npm registry (the version and hashes pinned in src/dermalens/web/runtime/package-lock.json; `npm ci`
# checks them) into <venv>/share/dermalens/. Safe to re-run: does nothing when that version is there.
# Needs npm: installed with apt-get when missing and we are root; otherwise it says what to do and exits 0
# (the browser-page tests then skip locally; under CI they fail, as they should).
#   bash scripts/install_web_runtime.sh [VENV]
set -euo pipefail
VENV=${1:-.venv}

if ! command -v npm >/dev/null 2>&1; then
  if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "npm missing: install Node.js and npm (as root: apt-get install -y nodejs npm), then re-run $0" >&2
    exit 0
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update
  apt-get install -y --no-install-recommends nodejs npm
fi
"$VENV/bin/python" -m dermalens.inference.web_runtime install
