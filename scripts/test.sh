#!/usr/bin/env bash
# Lint, then run the test suite in .venv (created by `scripts/install.sh test`).
# Arguments go to pytest, for example `scripts/test.sh tests/index -x`.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
.venv/bin/ruff check .
.venv/bin/ruff format --check .
exec .venv/bin/python -m pytest "$@"
