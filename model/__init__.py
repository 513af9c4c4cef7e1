"""AXM-Net: the network, its preprocessing, checkpoints, training and evaluation.

The public surface below is imported lazily, so `import model.config` does not load torch and
transformers: `build_model`, `AXMNet`, `ModelOutput`, `TokenBatch` (model.network); `save_checkpoint`,
`load_checkpoint`, `CheckpointError` (model.checkpoint); `Encoder`, `TextEmbeddings` (model.encoder);
`ModelError` (model.errors), the base of every error the package raises on purpose.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "build_model": "model.network",
    "AXMNet": "model.network",
    "ModelOutput": "model.network",
    "TokenBatch": "model.network",
    "save_checkpoint": "model.checkpoint",
    "load_checkpoint": "model.checkpoint",
    "CheckpointError": "model.checkpoint",
    "Encoder": "model.encoder",
    "TextEmbeddings": "model.encoder",
    "ModelError": "model.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'model' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
