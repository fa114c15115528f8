#!/usr/bin/env bash
# Runs the test suite with telemetry off and services bound to loopback: both tiers in one
# pytest call by default (one closing line for CI); arguments pass through, so
# `bash scripts/test.sh -m "not slow"` runs the fast tier alone and `-m slow` the service tier.
# One process by default: the service tests are CPU-bound (Ray Train, sampling), so on two cores
# pytest-xdist workers only compete for them and for Ray's CPUs (docs/performance.md); on a
# bigger machine TEST_WORKERS=4 runs four, one test file each at a time.
set -euo pipefail
cd "$(dirname "$0")/.."
export RAY_USAGE_STATS_ENABLED=0 PREFECT_SERVER_ANALYTICS_ENABLED=false DVC_NO_ANALYTICS=1 MLFLOW_DISABLE_TELEMETRY=true
export PATH="$PWD/.venv/bin:$PATH"
exec .venv/bin/python -m pytest -q --durations=15 -n "${TEST_WORKERS:-0}" --dist loadfile "$@"
