#!/usr/bin/env bash
# `make test`'s check that checkpoints written by `selm train` load in other people's code:
# scripts/reference/checkpoint.py trains a checkpoint of the tiny fixture model and one of SmolLM2
# (two optimizer steps each) and compares transformers' logits — from the checkpoint's Hugging Face
# directory and from its GGUF — with `selm logits` on the same tokens; with llama-cpp-python in the
# venv, llama.cpp's logits of the GGUF too. Each model is trained twice, with --checkpoint-dtype f32
# and bf16: the BF16 checkpoint's files (gguf-py's reader, transformers) are checked the same way and
# against the F32 one's logits within BF16's tolerance, and every trainer_state.json must load with
# transformers.TrainerState.load_from_json. Any mismatch or setup error exits non-zero.
#
# The Python side runs in a venv cached outside the repository, keyed by the hash of
# scripts/reference/requirements.txt: ${SELM_CACHE:-~/.cache/selm-server}/venv-<hash>. A missing
# or half-built venv is (re)created: torch's CPU wheel from the local wheel folder (/opt/wheels),
# the rest from PyPI.
#
#   scripts/check_checkpoint.sh            # SELM_BIN (default .build/debug/selm), SELM_MODEL
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
REQ="$ROOT/scripts/reference/requirements.txt"
CACHE="${SELM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/selm-server}"
VENV="$CACHE/venv-$(sha256sum "$REQ" | cut -c1-16)"
export SELM_BIN="${SELM_BIN:-$ROOT/.build/debug/selm}"

fail() { echo "check_checkpoint: $*" >&2; exit 1; }
[ -x "$SELM_BIN" ] || fail "no selm binary at $SELM_BIN (run swift build, or set SELM_BIN)"

mkdir -p "$CACHE"
# One builder at a time; a venv counts only once its marker is written (an interrupted install is
# removed and redone).
exec 9>"$VENV.lock"
flock 9
if [ ! -f "$VENV/.complete" ]; then
  start=$(date +%s)
  echo "check_checkpoint: creating the reference venv $VENV (torch CPU, transformers, safetensors, gguf, numpy)"
  rm -rf "$VENV"
  python3 -m venv "$VENV" || fail "python3 -m venv failed"
  links=()
  [ -d /opt/wheels ] && links=(--find-links /opt/wheels)
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${links[@]}" -r "$REQ" \
    || { rm -rf "$VENV"; fail "pip install -r $REQ failed"; }
  touch "$VENV/.complete"
  echo "check_checkpoint: venv ready in $(( $(date +%s) - start )) s"
fi
flock -u 9

start=$(date +%s)
"$VENV/bin/python" "$ROOT/scripts/reference/checkpoint.py" || fail "checkpoint check FAILED (see above)"
echo "check_checkpoint: passed in $(( $(date +%s) - start )) s"
