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

# bubblewrap gives managed workers their namespace sandbox (isolation: namespace). Without it
# workers still run, as plain child processes, and `iii worker status` says why.
if ! command -v bwrap >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] || sudo -n true >/dev/null 2>&1; then
    echo "setup: installing Debian bubblewrap (worker sandboxes)" >&2
    sudo_=""; [ "$(id -u)" = 0 ] || sudo_="sudo -n"
    export DEBIAN_FRONTEND=noninteractive
    $sudo_ apt-get install -y -q --no-install-recommends bubblewrap >/dev/null \
      || { $sudo_ apt-get update -q >/dev/null && $sudo_ apt-get install -y -q --no-install-recommends bubblewrap >/dev/null; } \
      || echo "setup: warning: could not install bubblewrap; workers will run without a sandbox" >&2
  else
    echo "setup: warning: bubblewrap (bwrap) not found and no root to install it; workers will run without a sandbox" >&2
  fi
fi
