#!/usr/bin/env bash
# Builds llama.cpp's benchmark tools (llama-batched-bench, llama-bench) from the llama.cpp vendored in
# the llama-cpp-python sdist, into a cache directory outside the repository, once. Prints the bin
# directory on its last line. Used by `make bench-vs-llamacpp`; not part of `make test`.
#
#   SELM_CACHE   cache root (default ~/.cache/selm-server)
#   LLAMACPP_PY  llama-cpp-python version whose vendored llama.cpp is built (default 0.3.36)
set -euo pipefail
VER="${LLAMACPP_PY:-0.3.36}"
ROOT="${SELM_CACHE:-$HOME/.cache/selm-server}/llamacpp-$VER"
BIN="$ROOT/build/bin"
if [ -x "$BIN/llama-batched-bench" ] && [ -x "$BIN/llama-bench" ]; then echo "$BIN"; exit 0; fi
mkdir -p "$ROOT"
# cmake from PyPI in a private venv when the system has none (Debian's would need root).
CMAKE="$(command -v cmake || true)"
if [ -z "$CMAKE" ]; then
  if [ ! -x "$ROOT/venv/bin/cmake" ]; then
    python3 -m venv "$ROOT/venv" >&2
    "$ROOT/venv/bin/pip" install -q cmake ninja >&2
  fi
  CMAKE="$ROOT/venv/bin/cmake"
  export PATH="$ROOT/venv/bin:$PATH"
fi
if [ ! -d "$ROOT/src" ]; then
  rm -rf "$ROOT/sdist" "$ROOT/src.tmp"
  # The sdist straight from the package index (`pip download` would build its metadata first).
  INDEX="${PIP_INDEX_URL:-https://pypi.org/simple}"
  HREF="$(curl -fsSL "$INDEX/llama-cpp-python/" | grep -o "href=\"[^\"]*llama_cpp_python-$VER\.tar\.gz[^\"]*\"" | head -1 | sed 's/^href="//; s/"$//')"
  [ -n "$HREF" ] || { echo "llama_cpp_python-$VER.tar.gz not found on $INDEX" >&2; exit 1; }
  case "$HREF" in http*) ;; *) HREF="$INDEX/llama-cpp-python/$HREF" ;; esac
  SHA="${HREF##*sha256=}"
  mkdir -p "$ROOT/sdist"
  curl -fsSL "${HREF%%#*}" -o "$ROOT/sdist/llama_cpp_python-$VER.tar.gz"
  echo "$SHA  $ROOT/sdist/llama_cpp_python-$VER.tar.gz" | sha256sum -c --quiet - >&2
  mkdir -p "$ROOT/src.tmp"
  tar -xzf "$ROOT"/sdist/llama_cpp_python-"$VER".tar.gz -C "$ROOT/src.tmp" --strip-components=1
  mv "$ROOT/src.tmp" "$ROOT/src"
fi
GEN=()
command -v ninja >/dev/null && GEN=(-G Ninja)
echo "building llama.cpp (llama-cpp-python $VER) in $ROOT/build: takes a while once" >&2
"$CMAKE" -S "$ROOT/src/vendor/llama.cpp" -B "$ROOT/build" "${GEN[@]}" -DCMAKE_BUILD_TYPE=Release \
  -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=ON \
  -DLLAMA_BUILD_SERVER=OFF -DBUILD_SHARED_LIBS=OFF >&2
"$CMAKE" --build "$ROOT/build" -j "$(nproc)" --target llama-batched-bench llama-bench >&2
echo "$BIN"
