"""Re-embedding of stored crops for `reindex`: call the embed function and check what it returns.

A failing batch is retried one crop at a time, so one bad crop fails only its own item.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from index.store import EmbedCrops
from index.validation import NORM_TOLERANCE

logger = logging.getLogger(__name__)


def embed_checked(
    embed: EmbedCrops, ids: Sequence[str], crops: Sequence[bytes], *, dim: int
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Embed `crops` and return (id -> float32 (dim,) embedding, id -> failure message)."""
    try:
        output = embed(list(crops))
        return _check_output(output, ids, dim=dim)
    except Exception as e:
        if len(ids) == 1:
            logger.debug("embedding %r failed: %s", ids[0], e)
            return {}, {ids[0]: f"embed failed: {type(e).__name__}: {e}"}
        logger.debug("embedding a batch of %d crops failed (%s); retrying one by one", len(ids), e)
    embeddings: dict[str, np.ndarray] = {}
    failures: dict[str, str] = {}
    for item_id, crop in zip(ids, crops, strict=True):
        single_embeddings, single_failures = embed_checked(embed, [item_id], [crop], dim=dim)
        embeddings.update(single_embeddings)
        failures.update(single_failures)
    return embeddings, failures


def _check_output(
    output: object, ids: Sequence[str], *, dim: int
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    matrix = np.asarray(output)
    if matrix.shape != (len(ids), dim) or not np.issubdtype(matrix.dtype, np.floating):
        raise ValueError(
            f"embed returned {matrix.dtype} {matrix.shape} for {len(ids)} crops; expected float ({len(ids)}, {dim})"
        )
    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    norms = np.linalg.norm(matrix.astype(np.float64), axis=1)
    embeddings: dict[str, np.ndarray] = {}
    failures: dict[str, str] = {}
    for row, item_id in enumerate(ids):
        if not np.isfinite(matrix[row]).all():
            failures[item_id] = "embed returned NaN or infinity"
        elif abs(norms[row] - 1.0) > NORM_TOLERANCE:
            failures[item_id] = f"embed returned an embedding of L2 norm {norms[row]:.6f}; expected 1"
        else:
            embeddings[item_id] = matrix[row]
    return embeddings, failures
