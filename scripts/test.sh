#!/usr/bin/env bash
# Idempotent test entry point: install everything that is missing or stale, then run pytest.
#   scripts/test.sh [pytest args...]      e.g. scripts/test.sh tests/test_conformance_raw.py -k greeting
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/setup.sh

# Python test dependencies (pytest, xdist, asyncio, timeout, official iii-sdk 0.25).
stamp=.venv/.pyiii-test.stamp
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] \
   || ! .venv/bin/python -c 'import pytest, xdist, pytest_asyncio, pytest_timeout, iii' >/dev/null 2>&1; then
  echo "test.sh: pip install -e '.[test]'" >&2
  .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
  touch "$stamp"
fi

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null 2>&1; then sudo -n "$@"; else
    echo "test.sh: need root (or sudo) to run: $*" >&2; return 1; fi
}

apt_install() {
  export DEBIAN_FRONTEND=noninteractive
  as_root apt-get install -y -q --no-install-recommends "$@" \
    || { as_root apt-get update -q && as_root apt-get install -y -q --no-install-recommends "$@"; }
}

# Node.js + the official Node SDK (iii-sdk 0.22.1) used by the N22 peers.
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  echo "test.sh: node/npm not found, installing Debian nodejs + npm" >&2
  apt_install nodejs npm
fi
peers=tests/peers
if [ ! -f "$peers/node_modules/iii-sdk/package.json" ] \
   || [ ! -f "$peers/node_modules/.package-lock.json" ] \
   || [ "$peers/package-lock.json" -nt "$peers/node_modules/.package-lock.json" ] \
   || [ "$peers/package.json" -nt "$peers/node_modules/.package-lock.json" ]; then
  echo "test.sh: installing Node peers in $peers" >&2
  if [ -f "$peers/package-lock.json" ]; then
    (cd "$peers" && npm ci --no-audit --no-fund --loglevel=error)
  else
    (cd "$peers" && npm install --no-audit --no-fund --loglevel=error)
  fi
fi

# redis-server, for the tests of the Redis-backed adapters.
if ! command -v redis-server >/dev/null 2>&1; then
  echo "test.sh: redis-server not found, installing Debian redis-server" >&2
  apt_install redis-server
fi

exec .venv/bin/python -m pytest -n 2 -q "$@"
