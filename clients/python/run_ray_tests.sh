#!/usr/bin/env bash
# Runs the Ray launcher's test (tests_ray/: one learner and two rollout replicas as actors of a local
# Ray instance, a replica killed with SIGKILL mid-run) against the real `selm` binary.
#
# Ray is a ~70 MB wheel that takes 1-1.5 min to install on this 2-core machine, too long to pay in
# every run of run_tests.sh's throw-away venv: it lives in a venv cached outside the repository,
# keyed by the hash of tests_ray/requirements.txt — ${SELM_CACHE:-~/.cache/selm-server}/venv-ray-<hash>
# — made when missing. The client itself is installed into it afresh on every run (from a copy, so
# the build leaves nothing in the source tree), with the [ray] extra's requirement checked.
#
#   clients/python/run_ray_tests.sh [pytest arguments...]      # SELM_BIN as for run_tests.sh
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
REQ="$HERE/tests_ray/requirements.txt"
CACHE="${SELM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/selm-server}"
VENV="$CACHE/venv-ray-$(sha256sum "$REQ" | cut -c1-16)"
mkdir -p "$CACHE"
exec 9>"$VENV.lock"
flock 9
if [ ! -f "$VENV/.complete" ]; then
  start=$(date +%s)
  echo "run_ray_tests: creating $VENV (ray, pytest)"
  rm -rf "$VENV"
  "${PYTHON:-python3}" -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$REQ" || { rm -rf "$VENV"; exit 1; }
  touch "$VENV/.complete"
  echo "run_ray_tests: venv ready in $(( $(date +%s) - start )) s"
fi
flock -u 9
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
mkdir "$tmp/src"
cp -r "$HERE/pyproject.toml" "$HERE/README.md" "$HERE/selm_client" "$tmp/src/"
# The [ray] extra: resolves against the cached ray (nothing downloaded when it satisfies it).
"$VENV/bin/pip" install --quiet --disable-pip-version-check --force-reinstall --no-deps "$tmp/src"
"$VENV/bin/pip" install --quiet --disable-pip-version-check "$tmp/src[ray]"
cd "$HERE"
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 RAY_USAGE_STATS_ENABLED=0
"$VENV/bin/pytest" -p no:cacheprovider "$@" tests_ray
