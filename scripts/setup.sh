#!/usr/bin/env bash
# Install pyiii into .venv (created with python3 if missing). Fast when already done.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON_BIN=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $PYTHON_BIN" >&2
  "$PYTHON_BIN" -m venv .venv
fi

stamp=.venv/.pyiii-setup.stamp
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] \
   || ! .venv/bin/python -m pip show -q pyiii >/dev/null 2>&1; then
  echo "setup: pip install -e ." >&2
  .venv/bin/python -m pip install -q --disable-pip-version-check -e .
  touch "$stamp"
fi
