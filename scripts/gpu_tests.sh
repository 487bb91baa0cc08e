#!/usr/bin/env bash
# GPU test suite (pytest marker `gpu`) on the GPU machine, which has no package index.
#   scripts/gpu_tests.sh pack   on a machine with an index: the pure-Python test dependencies
#                               that the GPU machine lacks go to .gputest/wheels (ignored by git; apart from .gpu/, which ../shared/tools/gpu-pack.sh rebuilds)
#   scripts/gpu_tests.sh run    on the GPU machine, from the project root with .gpu/ present:
#                               installs them under /tmp/site and runs `pytest -m gpu tests/gpu`,
#                               keeping the output as gpu-tests-<date>.txt in $GPU_TESTS_OUT
#                               (default bench/results)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
case "${1:-}" in
  pack)
    mkdir -p .gputest/wheels
    python3 -m pip download -q --no-deps -d .gputest/wheels \
      prometheus-client==0.26.0 pytest==9.2.0 pytest-asyncio==1.5.0 pluggy iniconfig packaging \
      pygments typing_extensions \
      opentelemetry-exporter-otlp-proto-grpc==1.45.2 opentelemetry-exporter-otlp-proto-common==1.45.2 \
      opentelemetry-proto==1.45.2 googleapis-common-protos tritonclient==2.73.0
    # The HTTP front end's aiohttp and its compiled dependencies, and tritonclient's JSON
    # library (tests/conftest.py imports tritonclient.grpc), built for the GPU machine's
    # Python 3.12.
    python3 -m pip download -q --no-deps -d .gputest/wheels --only-binary=:all: \
      --python-version 3.12 --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux_2_28_x86_64 \
      aiohttp==3.14.5 multidict==7.2.1 yarl==1.25.1 frozenlist==1.8.0 propcache==0.5.4 \
      aiosignal==1.4.0 aiohappyeyeballs==2.7.1 attrs==26.1.0 idna python-rapidjson==1.25
    ls .gputest/wheels
    ;;
  run)
    # A target of their own: `pip --target --upgrade` into /tmp/site would replace the
    # `opentelemetry` folder that the runtime wheels put there (namespace packages merge only
    # across separate path entries).
    python3 -m pip install -q --no-index --no-deps --upgrade --target /tmp/site-test .gputest/wheels/*.whl
    out=${GPU_TESTS_OUT:-bench/results}
    mkdir -p "$out"
    record="$out/gpu-tests-$(date -u +%Y-%m-%dT%H-%M).txt"
    # The device machine gets the working tree, not a current .git: the commit is the caller's.
    echo "commit ${GPU_TESTS_COMMIT:-unknown (set GPU_TESTS_COMMIT)}, $(hostname), $(date -u)" > "$record"
    PYTHONPATH=/tmp/site:/tmp/site-test:$root python3 -m pytest -q -m gpu tests/gpu -p no:cacheprovider -rA "${@:2}" \
      | tee -a "$record"
    ;;
  *)
    echo "usage: $0 pack|run" >&2
    exit 2
    ;;
esac
