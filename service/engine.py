"""The model and the gallery behind one object: load them, embed under a concurrency bound, search.

`SearchEngine` is what routes, jobs and CLI commands call. It contains one `Encoder` and one
`GalleryStore`. Its methods block (torch, FAISS), so the HTTP layer runs them in worker threads.
Forward passes are bounded by a semaphore of `inference_concurrency` slots: on a machine with few
cores, two torch calls at once are slower than two in a row, and a bulk upload releases the slot
between batches so searches are served while it runs. `open_store` is the one place that chooses
the gallery backend.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from index.store import GalleryStore, SearchFilters, SearchHit
from model.preprocess import decode_image
from service.errors import MissingCheckpointError, ServiceError
from service.limits import check_file_size, check_text, check_top_k, decode_limits
from service.metrics import ServiceMetrics
from service.settings import Settings

if TYPE_CHECKING:
    from model.encoder import Encoder, TextEmbeddings

logger = logging.getLogger(__name__)

# Warm-up description: any short English text exercises the tokenizer and the text branch.
WARM_UP_TEXT = "a person wearing a dark jacket and blue jeans"
WARM_UP_GREY = (124, 116, 104)


@dataclass(frozen=True)
class SearchOutcome:
    """Ranked hits of one query, with what tokenisation kept of a text query and the time taken."""

    hits: list[SearchHit]
    tokens_used: int
    truncated: bool
    took_ms: float


def load_encoder(settings: Settings) -> Encoder:
    """Load the checkpoint named by `settings.checkpoint` on `settings.device`."""
    from model.encoder import Encoder

    if not settings.checkpoint.is_file():
        raise MissingCheckpointError(
            f"checkpoint {settings.checkpoint} not found; set AXM_CHECKPOINT to a .safetensors file written "
            "by `axm train` (the repository ships weights/axm-effnet-minilm.safetensors)"
        )
    if settings.torch_threads:
        import torch

        # On a shared machine, one thread per forward pass avoids threads spinning against each other.
        torch.set_num_threads(settings.torch_threads)
    started = time.perf_counter()
    encoder = Encoder.from_checkpoint(
        settings.checkpoint, device=settings.device, batch_size=settings.encode_batch_size
    )
    logger.info(
        "model loaded: %s (identity %s, %d-d) on %s in %.1f s",
        settings.checkpoint.name,
        encoder.identity,
        encoder.dim,
        settings.device,
        time.perf_counter() - started,
    )
    return encoder


def open_store(settings: Settings, *, model_identity: str, dim: int, read_only: bool = False) -> GalleryStore:
    """Open the gallery of the configured backend for a model; the one place that picks the backend.

    `read_only` opens without the writer lock, beside a service that holds it (FAISS backend).
    """
    started = time.perf_counter()
    if settings.index_backend == "faiss":
        from index.faiss_store import FaissGalleryStore

        store: GalleryStore = FaissGalleryStore.open(
            settings.data_dir,
            model_identity=model_identity,
            dim=dim,
            index_spec=settings.index_spec,
            read_only=read_only,
        )
    elif settings.index_backend == "milvus":
        from index.milvus_store import open_milvus_store

        store = open_milvus_store(
            settings.milvus_uri, model_identity=model_identity, dim=dim, crops_dir=settings.data_dir / "crops"
        )
    else:  # Settings restricts the value; this guards a new Literal member without a branch.
        raise ServiceError(f"unknown index backend {settings.index_backend!r}; use faiss or milvus")
    manifest = store.manifest
    logger.info(
        "gallery opened: %s backend (%s), %d items, %d-d, index %s, in %.1f s",
        manifest.backend,
        settings.data_dir,
        manifest.count,
        manifest.dim,
        manifest.index_spec,
        time.perf_counter() - started,
    )
    return store


class SearchEngine:
    """One encoder and one gallery, with the service's limits, metrics and concurrency bound."""

    def __init__(
        self,
        encoder: Encoder,
        store: GalleryStore,
        *,
        settings: Settings,
        metrics: ServiceMetrics | None = None,
    ) -> None:
        self.encoder = encoder
        self.store = store
        self.settings = settings
        self.metrics = metrics or ServiceMetrics()
        self.decode_limits = decode_limits(settings)
        self._inference_slots = threading.BoundedSemaphore(settings.inference_concurrency)

    @property
    def model_identity(self) -> str:
        return self.encoder.identity

    @property
    def dim(self) -> int:
        return self.encoder.dim

    @property
    def max_text_tokens(self) -> int:
        """Tokens of a description the model reads; longer ones are truncated."""
        return int(self.encoder.config.text.max_length)

    @property
    def backend(self) -> str:
        return self.store.manifest.backend

    def encode_texts(self, texts: Sequence[str]) -> TextEmbeddings:
        """Embed descriptions, waiting for a free inference slot."""
        with self._inference_slots, self.metrics.time_encode("text", len(texts)):
            return self.encoder.encode_texts(list(texts))

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Embed decoded RGB images (N, D), waiting for a free inference slot."""
        with self._inference_slots, self.metrics.time_encode("image", len(images)):
            return self.encoder.encode_images(list(images))

    def search(
        self, queries: np.ndarray, *, top_k: int, filters: SearchFilters | None
    ) -> list[list[SearchHit]]:
        """Rank the gallery for each query embedding."""
        with self.metrics.time_search():
            return self.store.search(queries, top_k=top_k, filters=filters)

    def search_text(self, text: str, *, top_k: int, filters: SearchFilters | None = None) -> SearchOutcome:
        """Validate a description, embed it and rank the gallery."""
        started = time.perf_counter()
        check_text(text, max_chars=self.settings.max_text_chars)
        check_top_k(top_k, max_top_k=self.settings.max_top_k)

        embedded = self.encode_texts([text])
        hits = self.search(embedded.embeddings[:1], top_k=top_k, filters=filters)[0]
        return SearchOutcome(
            hits=hits,
            tokens_used=int(embedded.token_counts[0]),
            truncated=bool(embedded.truncated[0]),
            took_ms=1000.0 * (time.perf_counter() - started),
        )

    def search_image_bytes(
        self, data: bytes, *, top_k: int, filters: SearchFilters | None = None, filename: str | None = None
    ) -> SearchOutcome:
        """Decode a probe image through `model.preprocess`, embed it and rank the gallery."""
        started = time.perf_counter()
        check_top_k(top_k, max_top_k=self.settings.max_top_k)
        check_file_size(len(data), max_bytes=self.settings.max_file_bytes, filename=filename)

        decoded = decode_image(data, self.decode_limits)
        embedding = self.encode_images([decoded.image])
        hits = self.search(embedding, top_k=top_k, filters=filters)[0]
        return SearchOutcome(
            hits=hits, tokens_used=0, truncated=False, took_ms=1000.0 * (time.perf_counter() - started)
        )

    def search_item(self, item_id: str, *, top_k: int, filters: SearchFilters | None = None) -> SearchOutcome:
        """Rank the gallery with the stored embedding of one gallery item (the item itself included)."""
        started = time.perf_counter()
        check_top_k(top_k, max_top_k=self.settings.max_top_k)

        embedding = np.asarray(self.store.get_embedding(item_id), dtype=np.float32)[None, :]
        hits = self.search(embedding, top_k=top_k, filters=filters)[0]
        return SearchOutcome(
            hits=hits, tokens_used=0, truncated=False, took_ms=1000.0 * (time.perf_counter() - started)
        )

    def warm_up(self) -> None:
        """Run one text and one image forward pass, so the first request does not pay for lazy setup."""
        started = time.perf_counter()
        size = (self.encoder.config.input.width, self.encoder.config.input.height)
        self.encode_texts([WARM_UP_TEXT])
        self.encode_images([Image.new("RGB", size, WARM_UP_GREY)])
        logger.info("warm-up inference done in %.2f s", time.perf_counter() - started)

    def close(self) -> None:
        """Close the gallery; the encoder needs no release."""
        self.store.close()


def open_engine(
    settings: Settings, *, metrics: ServiceMetrics | None = None, read_only: bool = False
) -> SearchEngine:
    """Load the encoder and open the gallery for it, as `create_app` and the CLI commands do."""
    encoder = load_encoder(settings)
    store = open_store(settings, model_identity=encoder.identity, dim=encoder.dim, read_only=read_only)
    return SearchEngine(encoder, store, settings=settings, metrics=metrics)
