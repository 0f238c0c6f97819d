#!/usr/bin/env bash
# Regenerates the code derived from Proto/selm.proto; the output is committed.
#
#   scripts/gen_proto.sh            regenerate C (protoc-c) and Python (protoc) code
#   scripts/gen_proto.sh --check    regenerate into a temp dir and fail if the committed files differ
#
# Writes:
#   Sources/SelmProtoC/selm.pb-c.c, Sources/SelmProtoC/include/selm.pb-c.h   (protoc-c, used by Wire)
#   clients/python/selm_client/selm_pb2.py                                   (protoc, the Python client)
# Needs protoc-c (Debian: protobuf-c-compiler) and protoc (Debian: protobuf-compiler); installs them
# through scripts/deps.sh when missing. The committed files were made with protoc-c 1.4.1 and
# libprotoc 3.21.12 (Debian 12); other versions produce equivalent but not byte-identical code.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"

check=0
case "${1:-}" in
  "") ;;
  --check) check=1 ;;
  *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

"$ROOT/scripts/deps.sh" protoc-c protoc

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/c" "$tmp/py"
# The C code is generated from a copy in which every `string` field is `bytes` (the same wire
# format): protobuf-c unpacks `string` as a NUL-terminated char*, which loses the length, so a value
# with an embedded NUL would reach Swift cut short. As `bytes` (ProtobufCBinaryData: length + data)
# Wire sees every string's exact bytes and refuses a NUL or ill-formed UTF-8 naming the field. Map keys
# stay `string` (the language allows no other; they are only sent by the server). Python keeps `str`.
mkdir -p "$tmp/proto-c"
sed -E 's/^([[:space:]]*)(repeated[[:space:]]+)?string[[:space:]]/\1\2bytes /' Proto/selm.proto > "$tmp/proto-c/selm.proto"
# Paths relative to the folder so the generated code names the file "selm.proto" and includes "selm.pb-c.h".
protoc-c --proto_path="$tmp/proto-c" --c_out="$tmp/c" selm.proto
protoc --proto_path=Proto --python_out="$tmp/py" selm.proto

declare -A out=(
  ["$tmp/c/selm.pb-c.c"]="Sources/SelmProtoC/selm.pb-c.c"
  ["$tmp/c/selm.pb-c.h"]="Sources/SelmProtoC/include/selm.pb-c.h"
  ["$tmp/py/selm_pb2.py"]="clients/python/selm_client/selm_pb2.py"
)
status=0
for src in "${!out[@]}"; do
  dst="${out[$src]}"
  if [ "$check" -eq 1 ]; then
    if ! cmp -s "$src" "$dst"; then echo "out of date: $dst (run scripts/gen_proto.sh)" >&2; status=1; fi
  else
    mkdir -p "$(dirname "$dst")"
    cp "$src" "$dst"
    echo "wrote $dst"
  fi
done
exit $status
