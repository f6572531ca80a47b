#!/usr/bin/env bash
# Idempotent setup for `make up` and `make test`: a Python >= 3.11, the .venv,
# and the project installed in it. Re-installs only when pyproject.toml changes.
# `setup.sh --test` also installs what the tests need from Debian (chromium).
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"

# apt-get, waiting for a busy apt lock (another install, unattended-upgrades)
# instead of failing: dpkg's frontend lock honours DPkg::Lock::Timeout, the
# lists lock of `apt-get update` does not, so that one is retried.
apt_get() {
  local deadline=$((SECONDS + 900)) output
  while true; do
    if output=$($SUDO apt-get -o DPkg::Lock::Timeout=600 -qq "$@" 2>&1); then
      return 0
    fi
    if [[ "$output" != *"Could not get lock"* ]] || [ "$SECONDS" -ge "$deadline" ]; then
      printf '%s\n' "$output" >&2
      return 1
    fi
    echo "setup: apt is busy (another package manager holds its lock); waiting …" >&2
    sleep 5
  done
}

find_python() {
  for candidate in "${PYTHON:-}" python3.11 python3.12 python3.13 python3; do
    [ -n "$candidate" ] || continue
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys, venv; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      command -v "$candidate"; return 0
    fi
  done
  return 1
}

if ! python=$(find_python); then
  echo "setup: no Python >= 3.11 with venv; installing Debian's python3 …" >&2
  apt_get update && apt_get install -y python3 python3-venv python3-dev >/dev/null
  python=$(find_python) || { echo "setup: still no Python >= 3.11" >&2; exit 1; }
fi

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $python" >&2
  "$python" -m venv .venv
fi

stamp=".venv/.installed-$(cat pyproject.toml | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "setup: installing the project and its dependencies into .venv (first run takes a minute or two) …" >&2
  # Quiet unless it fails: the build backend is chatty.
  if ! { .venv/bin/python -m pip install -q --upgrade pip &&
         .venv/bin/python -m pip install -q -e ".[dev,postgres]"; } >.venv/install.log 2>&1; then
    cat .venv/install.log >&2
    exit 1
  fi
  rm -f .venv/.installed-*
  touch "$stamp"
fi

if [ "${1:-}" = "--test" ] && ! command -v chromium >/dev/null 2>&1; then
  # The dashboard's browser tests drive Debian's chromium (browser downloads fail here).
  echo "setup: installing Debian's chromium for the browser tests …" >&2
  apt_get update && apt_get install -y chromium >/dev/null
fi
