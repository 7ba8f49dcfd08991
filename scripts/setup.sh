#!/usr/bin/env bash
# Create .venv and install embedexp (editable).  `bash scripts/setup.sh test` adds the test extras.
# torch==2.13.0 goes first: it is a CPU build; a plain `torch` requirement would pull multi-GB CUDA wheels.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet torch==2.13.0
if [ "${1:-}" = "test" ]; then
  .venv/bin/python -m pip install --quiet -e ".[test]"
else
  .venv/bin/python -m pip install --quiet -e .
fi
echo "embedexp installed in $(pwd)/.venv"
