"""Large synthetic galleries for the latency-versus-size benchmark, written straight through `index`.

Items get seeded random L2-normalised embeddings and all share one tiny PNG crop, so the crops
directory contains a single file and the cost is SQLite rows, embeddings and the FAISS index. The
embeddings carry the checkpoint's identity and dimension, so the service opens the gallery as its own.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

# Items per upsert call: one SQLite transaction each.
WRITE_BATCH = 5000
# The smallest crop the service accepts (16×32, width×height), in the ImageNet mean grey.
TINY_CROP_SIZE = (16, 32)


@dataclass(frozen=True)
class SyntheticWrite:
    """How far a synthetic gallery grew: items present, items added by this call and its seconds."""

    count: int
    added: int
    seconds: float

    @property
    def items_per_s(self) -> float:
        return self.added / self.seconds if self.seconds else float("nan")


def tiny_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", TINY_CROP_SIZE, (124, 116, 104)).save(buffer, format="PNG")
    return buffer.getvalue()


def grow_synthetic_gallery(
    data_dir: Path, *, model_identity: str, dim: int, target: int, deadline: float, seed: int, index_spec: str
) -> SyntheticWrite:
    """Add synthetic items to the gallery in `data_dir` until it contains `target` items or `deadline` passes.

    `deadline` is a `time.perf_counter()` value. Ids are `synthetic/NNNNNNN`, so growing an existing
    gallery continues where it stopped; batch k always draws from seed (`seed`, k).
    """
    from index.faiss_store import FaissGalleryStore
    from index.store import NewItem

    crop = tiny_png()
    started = time.perf_counter()
    with FaissGalleryStore.open(
        data_dir, model_identity=model_identity, dim=dim, index_spec=index_spec
    ) as store:
        first_count = store.count()
        count = first_count
        while count < target and time.perf_counter() < deadline:
            size = min(WRITE_BATCH, target - count)
            vectors = np.random.default_rng((seed, count // WRITE_BATCH)).standard_normal(
                (size, dim), dtype=np.float32
            )
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            store.upsert(
                [
                    NewItem(
                        id=f"synthetic/{count + row:07d}",
                        embedding=vectors[row],
                        crop=crop,
                        width=TINY_CROP_SIZE[0],
                        height=TINY_CROP_SIZE[1],
                    )
                    for row in range(size)
                ]
            )
            count += size
    return SyntheticWrite(count=count, added=count - first_count, seconds=time.perf_counter() - started)
