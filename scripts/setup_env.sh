#!/usr/bin/env bash
# Create (or reuse) .venv and install dcae_deploy into it. `--test` adds the test extra.
# torch is pinned first to the CPU wheel so that no multi-GB CUDA build is pulled on CPU machines;
# pass TORCH_SPEC="torch" (or a CUDA index via PIP_EXTRA_INDEX_URL) on a GPU machine.
set -euo pipefail
cd "$(dirname "$0")/.."
extra=""
[ "${1:-}" = "--test" ] && extra="[test]"
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "${TORCH_SPEC:-torch==2.13.0}"
.venv/bin/python -m pip install --quiet -e ".${extra}"
