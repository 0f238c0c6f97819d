#!/usr/bin/env bash
# `make demo`: the online SELM loop on the default model. Makes a small venv for the demo's Python
# side (protobuf for the client, matplotlib for the plot; from PyPI, once), then runs
# clients/python/examples/online_selm.py, which starts `selm serve` with a fresh data directory.
# Extra arguments go to the script (e.g. `make demo ARGS="--compare"` or `ARGS="--alpha 0"`).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/demo_venv.sh
exec "$VENV/bin/python" clients/python/examples/online_selm.py --selm .build/release/selm "$@"
