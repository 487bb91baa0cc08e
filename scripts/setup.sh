#!/usr/bin/env bash
# Creates a Python environment (3.11+) and installs Ferry with its pinned dependencies. The README's
# commands and the container images (Dockerfile) all install through this one script.
#   scripts/setup.sh          runtime dependencies only
#   scripts/setup.sh test     plus the test extras (pytest, hypothesis, tritonclient, mypy, ruff, ...)
#   scripts/setup.sh gpu      plus the GPU extras (cuda-python, nvidia-ml-py)
# Environment:
#   FERRY_VENV=DIR            where the environment goes (default: .venv in the checkout)
#   FERRY_INSTALL=package     install Ferry itself rather than a link to the checkout (images)
#   FERRY_VENV_OPTIONS=...    options for `python -m venv`, e.g. --system-site-packages so that
#                             the GPU image sees the TensorRT bindings of NVIDIA's base image
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
python=${PYTHON:-python3}
venv=${FERRY_VENV:-.venv}
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "Ferry needs Python >= 3.11 ($python is $("$python" --version 2>&1))" >&2
  exit 1
fi
case "${1:-}" in
  "") extra="" ;;
  test|gpu) extra="[$1]" ;;
  *) echo "usage: scripts/setup.sh [test|gpu]" >&2; exit 2 ;;
esac
case "${FERRY_INSTALL:-editable}" in
  editable) target=(-e ".$extra") ;;
  package) target=(".$extra") ;;
  *) echo "FERRY_INSTALL is 'editable' or 'package'" >&2; exit 2 ;;
esac
# shellcheck disable=SC2086  # the options are words on purpose
[ -x "$venv/bin/python" ] || "$python" -m venv ${FERRY_VENV_OPTIONS:-} "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q "${target[@]}"
