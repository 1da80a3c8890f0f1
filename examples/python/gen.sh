#!/usr/bin/env bash
# Generates the Python gRPC stubs of warren.v1 into python/gen/ (gitignored).
# Needs grpcio-tools (pip install -r requirements.txt). Usage: ./gen.sh [PYTHON]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
python="${1:-${PYTHON:-python3}}"
proto="${WARREN_PROTO_DIR:-$here/../../proto}"
rm -rf "$here/gen"
mkdir -p "$here/gen"
"$python" -m grpc_tools.protoc -I"$proto" \
  --python_out="$here/gen" --pyi_out="$here/gen" --grpc_python_out="$here/gen" \
  "$proto/warren/v1/bus.proto"
echo "stubs generated in $here/gen" >&2
