# syntax=docker/dockerfile:1
# The search service with the shipped AXM-Net weights and an embedded FAISS gallery in /data.
#
#   CPU (default):  docker build -t axm-search .
#   CUDA:           docker build -t axm-search:cuda \
#                     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .
# The CUDA wheels of torch carry their own CUDA runtime, so the slim Python base serves both; the host
# needs the NVIDIA driver and container toolkit. BASE_IMAGE swaps the base (e.g. a CUDA runtime image
# with Python 3.11 or newer) where a site requires one.
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# One optional dependency group of pyproject.toml to install as well, e.g. milvus (docker-compose.milvus.yml).
ARG AXM_EXTRA=""

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    AXM_HOST=0.0.0.0 \
    AXM_PORT=8000 \
    AXM_DATA_DIR=/data \
    AXM_CHECKPOINT=/app/weights/axm-effnet-minilm.safetensors

WORKDIR /app

# Dependencies first: this layer is rebuilt only when pyproject.toml or the installer changes.
COPY pyproject.toml README.md ./
COPY scripts/install_deps.py scripts/
RUN python scripts/install_deps.py --torch-version "${TORCH_VERSION}" --torch-index-url "${TORCH_INDEX_URL}" \
    ${AXM_EXTRA:+--extra "${AXM_EXTRA}"}

COPY model/ model/
COPY index/ index/
COPY service/ service/
COPY weights/ weights/
RUN python -m pip install --no-cache-dir --no-deps . \
    && useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin axm \
    && mkdir -p /data \
    && chown axm:axm /data

USER axm
VOLUME ["/data"]
EXPOSE 8000

# /ready answers 200 once the model and the gallery are loaded and a warm-up inference has run.
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(f\"http://127.0.0.1:{os.environ.get('AXM_PORT', '8000')}/ready\", timeout=4)"]

CMD ["axm", "serve"]
