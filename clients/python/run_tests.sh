#!/usr/bin/env bash
# Runs the Python client's tests against a real `selm serve`, in a throw-away venv:
# python3 -m venv, pip install ./clients/python and tests/requirements.txt (pytest, openai; from PyPI), pytest.
#
#   clients/python/run_tests.sh [pytest arguments...]
#
# Environment: SELM_BIN (the server binary; default <repo>/.build/debug/selm, else .build/release/selm),
# SELM_MODEL (default <repo>/models/SmolLM2-135M-Instruct.Q4_1.gguf; `make model` fetches it),
# PYTHON (default python3).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
"${PYTHON:-python3}" -m venv "$tmp/venv"
# Installed from a copy, so the build leaves nothing (build/, *.egg-info) in the source tree.
mkdir "$tmp/src"
cp -r "$HERE/pyproject.toml" "$HERE/README.md" "$HERE/selm_client" "$tmp/src/"
"$tmp/venv/bin/pip" install --quiet --disable-pip-version-check "$tmp/src" -r "$HERE/tests/requirements.txt"
cd "$HERE"
# The venv's pytest (not `python -m pytest`, which would put this directory on sys.path): the tests
# import the installed package.
"$tmp/venv/bin/pytest" -p no:cacheprovider "$@" tests
