#!/usr/bin/env bash
# Sets up Ferry with its test extras, checks that the generated stubs are current, lints,
# type-checks and runs the whole test suite. Exits non-zero on any failure or if no test ran.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
scripts/setup.sh test
PYTHON=.venv/bin/python scripts/generate_proto.sh --check
.venv/bin/ruff check .
.venv/bin/mypy
set +e
.venv/bin/python -m pytest "$@"
status=$?
set -e
if [ $status -eq 5 ]; then
  echo "no tests ran" >&2
  exit 1
fi
exit $status
