#!/usr/bin/env bash
# `make compare`: SELM against DPO (and an α sweep) over seeds at equal step budgets, on two judges —
# clients/python/examples/compare.py with the release `selm` on the default model, in the demo's venv
# (protobuf, matplotlib; made once). Extra arguments go to the script (e.g. ARGS="--seeds 5" or
# ARGS="--resume" to finish an interrupted run). Output: compare-out/ (summary.md, results.jsonl,
# compare.png, each run's logs under runs/).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/demo_venv.sh
exec "$VENV/bin/python" clients/python/examples/compare.py --selm .build/release/selm "$@"
