#!/usr/bin/env bash
# Create .venv and install embedpipe with its test and DeepSpeed extras, from nothing.
# torch goes first, pinned: the CPU wheel; an unpinned torch would pull gigabytes of CUDA libraries.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "torch==2.13.0"
.venv/bin/python -m pip install --quiet -e ".[test,deepspeed]"
echo "embedpipe installed in $(pwd)/.venv"
