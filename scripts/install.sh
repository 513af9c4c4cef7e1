#!/usr/bin/env bash
# Create .venv and install the project into it: `install.sh` for the service, `install.sh test` for
# the test dependencies too. The CPU build of torch goes first so that no CUDA build is pulled in.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "torch==${AXM_TORCH_VERSION:-2.13.0}"
if [ "${1:-}" = "test" ]; then
    .venv/bin/python -m pip install --quiet -e '.[test]'
else
    .venv/bin/python -m pip install --quiet -e .
fi
