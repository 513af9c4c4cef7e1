#!/usr/bin/env bash
# Create .venv and install the project into it with the same steps as the Dockerfile:
# `install.sh` for the service, `install.sh test` for the test dependencies too.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
extras=()
if [ "${1:-}" = "test" ]; then
    extras=(--extra test)
fi
# AXM_TORCH_INDEX_URL picks the index torch comes from, e.g. https://download.pytorch.org/whl/cpu where
# pip's default index serves the CUDA build; empty means pip's own index and configuration.
.venv/bin/python scripts/install_deps.py "${extras[@]}" --torch-version "${AXM_TORCH_VERSION:-2.13.0}" \
    --torch-index-url "${AXM_TORCH_INDEX_URL:-}"
.venv/bin/python -m pip install --quiet --no-deps -e .
# The browser tests drive Debian's Chromium through Playwright, which downloads no browser of its own.
if [ "${1:-}" = "test" ] && [ ! -x /usr/bin/chromium ]; then
    as_root=()
    [ "$(id -u)" -eq 0 ] || as_root=(sudo)
    "${as_root[@]}" apt-get update -qq
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
