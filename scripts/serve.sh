#!/usr/bin/env bash
# Sets up Ferry, writes the example model repository to ./models and serves it on
# 127.0.0.1:8001 (ONNX Runtime on the CPU). Extra arguments go to `ferry serve`.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
scripts/setup.sh
.venv/bin/ferry example-repo models >/dev/null
exec .venv/bin/ferry serve --model-repository models "$@"
