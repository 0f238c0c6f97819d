#!/usr/bin/env bash
# The Python side of `make demo`, `make compare`, `make bench-sharing` and `make bench-cluster`: a small venv, .venv-demo
# (protobuf for the client, matplotlib for the plots; from PyPI, once). Sourced by demo.sh and
# compare.sh, run by the Makefile; leaves VENV set to its path. Run from the repository root.
VENV=.venv-demo
if ! "$VENV/bin/python" -c "import google.protobuf, matplotlib" >/dev/null 2>&1; then
  echo "setting up $VENV (protobuf, matplotlib) ..." >&2
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "protobuf>=4.21" matplotlib
fi
