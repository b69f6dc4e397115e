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
# --test: system tools the tests use (kubectl renders the Kustomize overlays), installed only when missing, as root
if [ "${1:-}" = "--test" ] && ! command -v kubectl >/dev/null 2>&1; then
  if [ "$(id -u)" = "0" ]; then
    apt-get update -qq && apt-get install -y -qq kubernetes-client >/dev/null
  else
    echo "kubectl is missing and this is not root: install Debian's kubernetes-client" >&2
  fi
fi
echo "embedpipe installed in $(pwd)/.venv"
