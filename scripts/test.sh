#!/usr/bin/env bash
# Runs the test suite with telemetry off and services bound to loopback: both tiers in one
# pytest call by default (one closing line for CI); arguments pass through, so
# `bash scripts/test.sh -m "not slow"` runs the fast tier alone and `-m slow` the service tier.
# Two pytest-xdist workers, one test file each at a time: most service tests wait on a server or a
# subprocess, so two of them share this machine's cores well; `-n 0` runs everything in one process.
set -euo pipefail
cd "$(dirname "$0")/.."
export RAY_USAGE_STATS_ENABLED=0 PREFECT_SERVER_ANALYTICS_ENABLED=false DVC_NO_ANALYTICS=1
export PATH="$PWD/.venv/bin:$PATH"
exec .venv/bin/python -m pytest -q --durations=15 -n "${TEST_WORKERS:-2}" --dist loadfile "$@"
