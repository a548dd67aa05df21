#!/usr/bin/env bash
# Create (or reuse) .venv in the repository root and install stage1_cascade with its dev extra,
# then register the `python3` Jupyter kernel that papermill runs the notebooks with.
# Usage: bash tools/setup.sh        (idempotent; about 5-10 minutes on a fresh machine)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
if [ ! -x .venv/bin/python ]; then "$PY" -m venv .venv; fi
export PIP_DISABLE_PIP_VERSION_CHECK=1
# torch 2.14.1 / torchvision 0.29.1 come from this machine's wheel store when pip is configured
# for it; elsewhere pip takes them from PyPI.
.venv/bin/python -m pip install -q -e ".[dev]" 2> >(grep -v "^WARNING: Location" >&2)
.venv/bin/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (stage1_cascade)" >/dev/null
echo "setup: $(.venv/bin/stage1-cascade --version) in $(pwd)/.venv"
