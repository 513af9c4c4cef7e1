"""Exact inner-product top-k over embeddings streamed in chunks, the fallback of filtered search.

The store uses it when a filter keeps few items, because scoring them directly is cheaper than a FAISS
pass. It also re-ranks a query for which an approximate index returned fewer than k hits although k
items match: HNSW and IVF explore only part of the gallery, so a selective filter can leave their
candidate lists short.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

RankedLabels = tuple[np.ndarray, np.ndarray]  # (labels (k,) int64, scores (k,) float32), best first


def exact_top_k(
    queries: np.ndarray, chunks: Iterable[tuple[np.ndarray, np.ndarray]], k: int
) -> list[RankedLabels]:
    """Return, per query of `queries` (Q, D), the k best (labels, scores) over every chunk.

    Each result is sorted by score, highest first, and equal scores by label.
    """
    num_queries = queries.shape[0]
    best_labels = np.empty((num_queries, 0), dtype=np.int64)
    best_scores = np.empty((num_queries, 0), dtype=np.float32)
    for labels, vectors in chunks:
        scores = queries @ vectors.T  # (Q, N) inner products
        best_labels = np.concatenate([best_labels, np.broadcast_to(labels, scores.shape)], axis=1)
        best_scores = np.concatenate([best_scores, scores.astype(np.float32)], axis=1)
        if best_scores.shape[1] > k:
            keep = np.argpartition(-best_scores, k - 1, axis=1)[:, :k]
            best_labels = np.take_along_axis(best_labels, keep, axis=1)
            best_scores = np.take_along_axis(best_scores, keep, axis=1)
    results = []
    for row_labels, row_scores in zip(best_labels, best_scores, strict=True):
        order = np.lexsort((row_labels, -row_scores))
        results.append((row_labels[order], row_scores[order]))
    return results
