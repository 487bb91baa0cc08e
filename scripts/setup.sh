#!/usr/bin/env bash
# Creates .venv (Python 3.11+) and installs Ferry with the pinned dependencies.
#   scripts/setup.sh          runtime dependencies only
#   scripts/setup.sh test     plus the test extras (pytest, hypothesis, tritonclient, mypy, ruff)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
python=${PYTHON:-python3}
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "Ferry needs Python >= 3.11 ($python is $("$python" --version 2>&1))" >&2
  exit 1
fi
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
extra=""
[ "${1:-}" = "test" ] && extra="[test]"
.venv/bin/python -m pip install -q -e ".$extra"
