#!/usr/bin/env bash
# Regenerates the code derived from Proto/selm.proto; the output is committed.
#
#   scripts/gen_proto.sh            regenerate C (protoc-c), Python (protoc) and Swift (gen_wire.py) code
#   scripts/gen_proto.sh --check    regenerate into a temp dir and fail if the committed files differ
#
# Writes:
#   Sources/SelmProtoC/selm.pb-c.c, Sources/SelmProtoC/include/selm.pb-c.h   (protoc-c, used by Wire)
#   clients/python/selm_client/selm_pb2.py                                   (protoc, the Python client)
#   Sources/Wire/Generated/{Messages,Encode,Decode}.swift                    (scripts/gen_wire.py from
#                                                 protoc's descriptor set: Wire's value types and codec)
# Needs protoc-c (Debian: protobuf-c-compiler), protoc (Debian: protobuf-compiler) and Python 3.10+
# (standard library only); installs the first two through scripts/deps.sh when missing. The committed
# files were made with protoc-c 1.4.1 and libprotoc 3.21.12 (Debian 12); other versions produce
# equivalent but not byte-identical C and Python code (the Swift code depends only on the .proto).
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
mkdir -p "$tmp/c" "$tmp/py" "$tmp/swift"
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
# The Swift mirror (value types, encode to / decode from the protobuf-c structs above) is generated
# from the real .proto's descriptor set, comments included (they become the `///` doc comments).
protoc --proto_path=Proto --include_source_info --descriptor_set_out="$tmp/selm.desc" selm.proto
python3 scripts/gen_wire.py "$tmp/selm.desc" "$tmp/swift"

declare -A out=(
  ["$tmp/c/selm.pb-c.c"]="Sources/SelmProtoC/selm.pb-c.c"
  ["$tmp/c/selm.pb-c.h"]="Sources/SelmProtoC/include/selm.pb-c.h"
  ["$tmp/py/selm_pb2.py"]="clients/python/selm_client/selm_pb2.py"
)
for f in "$tmp"/swift/*.swift; do out["$f"]="Sources/Wire/Generated/$(basename "$f")"; done
status=0
# A committed generated Swift file the generator no longer writes is stale too.
for f in Sources/Wire/Generated/*.swift; do
  [ -e "$f" ] || continue
  if [ ! -e "$tmp/swift/$(basename "$f")" ]; then
    if [ "$check" -eq 1 ]; then echo "stale: $f (run scripts/gen_proto.sh)" >&2; status=1; else rm "$f"; echo "removed $f"; fi
  fi
done
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
