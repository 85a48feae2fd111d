#!/usr/bin/env bash
# Resolves constraints.txt with the project and its extras on each supported Python, without
# installing (pip's --dry-run): run it after updating the pins. Usage:
#   deploy/check_lock.sh [python3.10 python3.11 python3.12]
# Each interpreter gets a throw-away venv under ${TMPDIR:-/tmp}; exit status 1 if any fails.
set -uo pipefail
cd "$(dirname "$0")/.."
pythons=("$@")
[ ${#pythons[@]} -gt 0 ] || pythons=(python3.10 python3.11 python3.12)
status=0
for py in "${pythons[@]}"; do
  venv="${TMPDIR:-/tmp}/carla-td3-lock-$(basename "$py")"
  rm -rf "$venv"
  if ! "$py" -m venv "$venv" >/dev/null 2>&1; then
    echo "check_lock: $py: cannot make a venv"; status=1; continue
  fi
  "$venv/bin/pip" install --quiet --upgrade pip >/dev/null 2>&1
  if "$venv/bin/pip" install --dry-run --quiet --constraint constraints.txt torch==2.13.0 \
       -e '.[test,bench]' >"$venv.log" 2>&1; then
    echo "check_lock: $py ($("$venv/bin/python" -V 2>&1)): resolves"
  else
    echo "check_lock: $py: FAILS, see $venv.log"; status=1
  fi
  rm -rf "$venv"
done
exit $status
