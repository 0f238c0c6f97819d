#!/usr/bin/env bash
# Installs the Debian packages the build needs, only those pkg-config (or PATH) cannot find.
set -euo pipefail
need=()
command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
if command -v pkg-config >/dev/null 2>&1; then
  pkg-config --exists openblas || need+=(libopenblas-dev)
  pkg-config --exists libuv || need+=(libuv1-dev)
  pkg-config --exists libprotobuf-c || need+=(libprotobuf-c-dev)
else
  need+=(libopenblas-dev libuv1-dev libprotobuf-c-dev)
fi
# libhttp-parser-dev has no pkg-config file: look for its header.
[ -f /usr/include/http_parser.h ] || need+=(libhttp-parser-dev)
for tool in "$@"; do
  case $tool in
    protoc-c) command -v protoc-c >/dev/null 2>&1 || need+=(protobuf-c-compiler) ;;
    protoc) command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler) ;;
  esac
done
[ ${#need[@]} -eq 0 ] && exit 0
echo "installing Debian packages: ${need[*]}" >&2
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
