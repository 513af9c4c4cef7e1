"""A writer process for the crash and lock tests, run as `python faiss_writer_process.py MODE PATH`.

Modes:
- `write`: upsert batches forever. Batch b adds `BATCH_SIZE` new ids and replaces two ids of batch
  b-1 with version b. Every fifth batch also deletes one id of batch b-2. After each call returns,
  it prints `ACK UPSERT b` or `ACK DELETE id` and flushes, so every printed line is acknowledged.
  It saves index.faiss after batch 3, so a later kill leaves a stale index file behind.
- `hold`: open the store for writing, print `READY <pid>` and wait for a line on stdin, then close.

Item content is a pure function of (id, version), so the parent can check what survived a kill.
"""

from __future__ import annotations

import hashlib
import os
import sys
from datetime import timedelta
from pathlib import Path

import numpy as np
from index_helpers import BASE_TIME, crop_bytes  # found beside this script, which Python puts on sys.path

from index.faiss_store import FaissGalleryStore
from index.store import NewItem

MODEL_IDENTITY = "crash-test-model"
DIM = 16
BATCH_SIZE = 40
REPLACED_PER_BATCH = 2
CHECKPOINT_AFTER_BATCH = 3


def new_ids(batch: int) -> list[str]:
    return [f"b{batch:05d}-{n:02d}" for n in range(BATCH_SIZE)]


def replaced_ids(batch: int) -> list[str]:
    """Ids of batch `batch - 1` that batch `batch` replaces."""
    return new_ids(batch - 1)[:REPLACED_PER_BATCH] if batch > 0 else []


def deleted_id(batch: int) -> str | None:
    """The id of batch `batch - 2` that batch `batch` deletes after its upsert, if any."""
    return new_ids(batch - 2)[-1] if batch >= 2 and batch % 5 == 0 else None


def embedding_for(item_id: str, version: int) -> np.ndarray:
    seed = int.from_bytes(hashlib.sha256(f"{item_id}@{version}".encode()).digest()[:8], "little")
    vector = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
    return vector / np.linalg.norm(vector)


def item_for(item_id: str, version: int) -> NewItem:
    return NewItem(
        id=item_id,
        embedding=embedding_for(item_id, version),
        crop=crop_bytes(item_id, version),
        width=48,
        height=96,
        camera_id=f"cam{version % 3}",
        captured_at=BASE_TIME + timedelta(minutes=version),
        source="crash-test",
        extra={"version": version},
    )


def batch_items(batch: int) -> list[NewItem]:
    return [item_for(item_id, batch) for item_id in new_ids(batch) + replaced_ids(batch)]


def write_forever(path: Path) -> None:
    store = FaissGalleryStore.open(path, model_identity=MODEL_IDENTITY, dim=DIM)
    batch = 0
    while True:
        store.upsert(batch_items(batch))
        print(f"ACK UPSERT {batch}", flush=True)
        victim = deleted_id(batch)
        if victim is not None:
            store.delete([victim])
            print(f"ACK DELETE {victim}", flush=True)
        if batch == CHECKPOINT_AFTER_BATCH:
            store.checkpoint()
        batch += 1


def hold_lock(path: Path) -> None:
    store = FaissGalleryStore.open(path, model_identity=MODEL_IDENTITY, dim=DIM)
    print(f"READY {os.getpid()}", flush=True)
    sys.stdin.readline()
    store.close()


if __name__ == "__main__":
    mode, directory = sys.argv[1], Path(sys.argv[2])
    {"write": write_forever, "hold": hold_lock}[mode](directory)
