"""The reference for ingest throughput: the model's own batch throughput, and the ingest stages in-process.

`InProcessIngest` runs the service's ingest steps without HTTP and times each on its own. The steps
are: decode through `model.preprocess.decode_image`, embed with `Encoder.encode_images` (resize and
normalise included), the content-hash id, and `GalleryStore.upsert` into a FAISS gallery of its own
(crop files written with fsync, one SQLite transaction per batch). Decode plus embed is the model's
batch throughput.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench_service_load import Crop


@dataclass
class IngestProfile:
    """Seconds spent per ingest stage over `crops` crops."""

    crops: int = 0
    decode_s: float = 0.0
    encode_s: float = 0.0
    hash_s: float = 0.0
    upsert_s: float = 0.0

    @property
    def model_s(self) -> float:
        """Decode plus embed: the work the model's batch throughput is measured on."""
        return self.decode_s + self.encode_s

    @property
    def model_crops_per_s(self) -> float:
        return self.crops / self.model_s if self.model_s else float("nan")

    @property
    def pipeline_s(self) -> float:
        return self.decode_s + self.encode_s + self.hash_s + self.upsert_s

    @property
    def pipeline_crops_per_s(self) -> float:
        return self.crops / self.pipeline_s if self.pipeline_s else float("nan")


class InProcessIngest:
    """An `Encoder` and a FAISS gallery in this process, fed one batch at a time by `run_batch`."""

    def __init__(
        self,
        checkpoint: Path,
        *,
        batch_size: int,
        data_dir: Path,
        warm_up: list[Crop],
        threads: int | None = None,
    ) -> None:
        import torch

        from index.faiss_store import FaissGalleryStore
        from model.encoder import Encoder
        from model.preprocess import decode_image

        if threads is not None:  # match the service's intra-op threads, so both paths do the same work
            torch.set_num_threads(threads)
        self.threads = torch.get_num_threads()
        self._decode_image = decode_image
        self.encoder = Encoder.from_checkpoint(checkpoint, batch_size=batch_size)
        self.encoder.encode_images([decode_image(crop.data).image for crop in warm_up])
        self.store = FaissGalleryStore.open(
            data_dir, model_identity=self.encoder.identity, dim=self.encoder.dim
        )
        self.profile = IngestProfile()

    def run_batch(self, batch: list[Crop]) -> None:
        """Decode, embed, hash and upsert one batch, adding each stage's time to `profile`."""
        from index.store import NewItem

        started = time.perf_counter()
        decoded = [self._decode_image(crop.data) for crop in batch]
        decoded_at = time.perf_counter()
        embeddings = self.encoder.encode_images([image.image for image in decoded])
        encoded_at = time.perf_counter()
        ids = [hashlib.sha256(crop.data).hexdigest() for crop in batch]
        hashed_at = time.perf_counter()
        items: list[Any] = [
            NewItem(
                id=item_id,
                embedding=row,
                crop=crop.data,
                width=image.width,
                height=image.height,
                source=crop.name,
            )
            for item_id, row, crop, image in zip(ids, embeddings, batch, decoded, strict=True)
        ]
        self.store.upsert(items)
        upserted_at = time.perf_counter()

        self.profile.crops += len(batch)
        self.profile.decode_s += decoded_at - started
        self.profile.encode_s += encoded_at - decoded_at
        self.profile.hash_s += hashed_at - encoded_at
        self.profile.upsert_s += upserted_at - hashed_at

    def close(self) -> None:
        self.store.close()
