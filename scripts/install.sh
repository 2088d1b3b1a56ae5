#!/usr/bin/env bash
# Creates .venv (if missing) and installs medsched with pinned dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -c constraints.txt -e '.[dev]'
# Generated protobuf/gRPC code is committed; regenerating here keeps a clone that
# edited a .proto consistent. `--check` (used by CI) fails instead of writing.
.venv/bin/python -m deploy.protogen
