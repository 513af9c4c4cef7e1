"""Seeded synthetic galleries for the index tests: unit vectors, items, an exact reference, an embed function."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

import numpy as np

from index.store import GalleryStore, NewItem, SearchHit

# Tolerance between FAISS's float32 scores and the float64 reference. The worst-case float32 rounding
# error of an inner product of two unit vectors in D dimensions is about D × 6e-8, so 2e-6 for the
# 32-d test vectors. Scores closer than this may also be ranked in either order.
SCORE_TOLERANCE = 1e-5
BASE_TIME = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)


def unit_vectors(count: int, dim: int, *, seed: int) -> np.ndarray:
    """Return `count` random L2-normalised float32 vectors (count, dim)."""
    vectors = np.random.default_rng(seed).standard_normal((count, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def clustered_vectors(count: int, dim: int, *, clusters: int, seed: int, spread: float = 0.35) -> np.ndarray:
    """Return unit vectors drawn around `clusters` random centres, like embeddings of repeated identities."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    noise = rng.standard_normal((count, dim)).astype(np.float32) * spread / np.sqrt(dim)
    vectors = centres[rng.integers(0, clusters, size=count)] + noise
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def crop_bytes(item_id: str, version: int = 0) -> bytes:
    """Return stand-in crop bytes for an id; the store treats crops as opaque bytes."""
    return f"crop of {item_id} v{version}".encode()


def make_items(
    vectors: np.ndarray,
    *,
    prefix: str = "item",
    start: int = 0,
    cameras: Sequence[str] = ("cam1", "cam2", "cam3"),
    distinct_crops: int | None = None,
) -> list[NewItem]:
    """Return one item per vector: ids `prefix-00000`..., cameras round-robin, one capture per minute.

    `distinct_crops` shares crop bytes among items (content addressing stores each once), which keeps
    large galleries fast to write.
    """
    items = []
    for offset, vector in enumerate(vectors):
        number = start + offset
        item_id = f"{prefix}-{number:05d}"
        crop_key = f"shared-{number % distinct_crops}" if distinct_crops else item_id
        items.append(
            NewItem(
                id=item_id,
                embedding=vector,
                crop=crop_bytes(crop_key),
                width=64,
                height=128,
                camera_id=cameras[number % len(cameras)],
                captured_at=BASE_TIME + timedelta(minutes=number),
                source="synthetic",
                extra={"number": number},
            )
        )
    return items


def exact_ranking(
    gallery: np.ndarray, ids: Sequence[str], query: np.ndarray, k: int
) -> list[tuple[str, float]]:
    """Return the exact top-k (id, score) of `query` against `gallery` by a full numpy inner product."""
    scores = gallery.astype(np.float64) @ query.astype(np.float64)
    order = np.argsort(-scores, kind="stable")[:k]
    return [(ids[i], float(scores[i])) for i in order]


def assert_matches_reference(hits: list[SearchHit], reference: list[tuple[str, float]]) -> None:
    """Check hits against an exact ranking: same length, scores within tolerance, ids where not tied."""
    assert len(hits) == len(reference)
    assert [hit.rank for hit in hits] == list(range(1, len(hits) + 1))
    reference_scores = np.array([score for _, score in reference])
    hit_scores = np.array([hit.score for hit in hits])
    np.testing.assert_allclose(hit_scores, reference_scores, atol=SCORE_TOLERANCE)
    for position, (hit, (expected_id, score)) in enumerate(zip(hits, reference, strict=True)):
        neighbours = reference_scores[max(0, position - 1) : position + 2]
        tied = np.sum(np.abs(neighbours - score) <= SCORE_TOLERANCE) > 1
        if not tied:
            assert hit.item.id == expected_id, f"rank {position + 1}: {hit.item.id} != {expected_id}"


def hash_embed(dim: int, *, seed: int = 7) -> Callable[[Sequence[bytes]], np.ndarray]:
    """Return an embed function mapping crop bytes to a unit vector by a seeded hash projection."""

    def embed(crops: Sequence[bytes]) -> np.ndarray:
        rows = []
        for crop in crops:
            digest = hashlib.sha256(crop).digest()
            rng = np.random.default_rng([seed, *digest[:8]])
            row = rng.standard_normal(dim)
            rows.append(row / np.linalg.norm(row))
        return np.asarray(rows, dtype=np.float32).reshape(len(crops), dim)

    return embed


def all_ids(store: GalleryStore, page_size: int = 500) -> list[str]:
    """Return every id in the store by walking the listing cursor."""
    ids: list[str] = []
    cursor = None
    while True:
        page = store.list(cursor=cursor, limit=page_size)
        ids.extend(item.id for item in page.items)
        if page.next_cursor is None:
            return ids
        cursor = page.next_cursor
