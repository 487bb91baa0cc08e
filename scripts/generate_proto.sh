#!/usr/bin/env bash
# Regenerates the Python stubs in proto/ from the .proto sources with the pinned grpcio-tools.
#   scripts/generate_proto.sh          write the stubs into proto/
#   scripts/generate_proto.sh --check  exit 1 when the checked-in stubs differ from a fresh run
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
python=${PYTHON:-python3}
out=proto
if [ "${1:-}" = "--check" ]; then
  out=$(mktemp -d)
  mkdir -p "$out/ferry/proto"
fi
dest=$([ "$out" = proto ] && echo . || echo "$out")
# The sources are compiled through the ferry/ package (ferry/proto links to proto/), so the
# generated modules import each other as ferry.proto.*.
"$python" -m grpc_tools.protoc -I . \
  --python_out="$dest" --pyi_out="$dest" --grpc_python_out="$dest" \
  ferry/proto/model_config.proto ferry/proto/grpc_service.proto
# Point the generated modules at Ferry's private descriptor pool (see proto/_pool.py).
for f in "$dest"/ferry/proto/*_pb2.py; do
  sed -i -e 's/^from google.protobuf import descriptor_pool as _descriptor_pool$/from ferry.proto._pool import POOL as _FERRY_POOL/' \
         -e 's/_descriptor_pool\.Default()/_FERRY_POOL/' "$f"
done
if [ "${1:-}" = "--check" ]; then
  status=0
  for f in "$out"/ferry/proto/*_pb2*.py*; do
    name=$(basename "$f")
    if ! cmp -s "$f" "proto/$name"; then
      echo "stale generated stub: proto/$name (run scripts/generate_proto.sh)" >&2
      status=1
    fi
  done
  rm -rf "$out"
  [ $status -eq 0 ] && echo "generated stubs are current"
  exit $status
fi
