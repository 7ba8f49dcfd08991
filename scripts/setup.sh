#!/usr/bin/env bash
# Create .venv and install embedexp (editable).  `bash scripts/setup.sh test` adds the test extras.
# torch==2.13.0 goes first: it is a CPU build; a plain `torch` requirement would pull multi-GB CUDA wheels.
# Quiet: one line per step; pip's errors (and the failing command) still show, and the script stops on them.
set -euo pipefail
cd "$(dirname "$0")/.."
PIP=(.venv/bin/python -m pip install -qq --disable-pip-version-check --no-input)  # -qq: errors only
echo "creating .venv ($(python3 --version))"
python3 -m venv .venv
"${PIP[@]}" --upgrade pip
echo "installing torch 2.13.0 (CPU build)"
"${PIP[@]}" torch==2.13.0
if [ "${1:-}" = "test" ]; then
  echo "installing embedexp (editable) with the test extras"
  "${PIP[@]}" -e ".[test]"
else
  echo "installing embedexp (editable)"
  "${PIP[@]}" -e .
fi
echo "embedexp installed in $(pwd)/.venv"
