#!/usr/bin/env bash
# Idempotent set-up on a fresh machine: a virtualenv in .venv with the CPU build of PyTorch
# (installed first, so nothing pulls a CUDA build) and the project with its test and benchmark extras.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check torch==2.13.0 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[test,bench]" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import torch, ray, prefect, mlflow, dvc, webdataset, pyarrow" \
  || { echo "setup: the virtualenv is incomplete; see pip's messages above" >&2; exit 1; }
echo "setup: ready (.venv)"
