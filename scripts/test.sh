#!/usr/bin/env bash
# Run the test suite in .venv (created by `scripts/install.sh test`).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec .venv/bin/python -m pytest "$@"
