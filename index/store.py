"""The gallery store interface, its item and result types, and its errors.

A gallery holds, per external string id chosen by the client, one L2-normalised embedding, the
crop's metadata and the crop's bytes. Backends (the embedded FAISS store, Milvus) implement
`GalleryStore`; callers depend only on this module.

Errors, all under `GalleryError`:

    GalleryError
    ├── ModelMismatchError     the store was built with another model identity or dimension
    ├── ItemNotFoundError      an id is not in the gallery
    ├── InvalidItemError       an item or query is malformed (bad id, wrong dimension, not normalised)
    ├── InvalidCursorError     a listing cursor was not produced by this store
    ├── InvalidConfigError     a store option is invalid (an unsupported index spec, a bad tuning value)
    ├── StoreNotFoundError     no gallery exists at the location and creating one was not allowed
    ├── StoreLockedError       another writer holds the data directory
    ├── StoreUnavailableError  the backend (a Milvus server) cannot be reached or failed a request
    └── StoreCorruptError      the data directory cannot be read and cannot be repaired
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import numpy as np

SCHEMA_VERSION = 1
# Maximum length of an external id; ids are opaque strings such as "cam3/2026-12-01T10:00:00Z/track17".
MAX_ID_LENGTH = 512


class GalleryError(Exception):
    """Base class of every error raised by `index`."""


class ModelMismatchError(GalleryError):
    """Raised when a store is opened with a model identity or embedding dimension it was not built with."""


class ItemNotFoundError(GalleryError, KeyError):
    """Raised when an id is not in the gallery."""

    def __str__(self) -> str:  # KeyError quotes its argument; keep the message readable.
        return str(self.args[0]) if self.args else "item not found"


class InvalidItemError(GalleryError, ValueError):
    """Raised when an item, id, embedding or query is malformed."""


class InvalidCursorError(GalleryError, ValueError):
    """Raised when a listing cursor was not produced by this store."""


class InvalidConfigError(GalleryError, ValueError):
    """Raised when a store option is invalid, such as an index spec the backend cannot build."""


class StoreNotFoundError(GalleryError):
    """Raised when no gallery exists at the location and the caller did not allow creating one."""


class StoreLockedError(GalleryError):
    """Raised when another writer process has the data directory open; one writer process at a time may open it."""


class StoreUnavailableError(GalleryError):
    """Raised when a remote backend cannot be reached or fails a request it should accept."""


class StoreCorruptError(GalleryError):
    """Raised when a data directory cannot be read and cannot be repaired from its stored embeddings."""


@dataclass(frozen=True)
class SearchFilters:
    """Restrictions applied before ranking, so a filtered search still returns `top_k` matches.

    `camera_ids` keeps items from those cameras; `captured_from` and `captured_to` bound `captured_at`
    inclusively (timezone-aware). An item without `captured_at` fails any time bound.
    """

    camera_ids: frozenset[str] | None = None
    captured_from: datetime | None = None
    captured_to: datetime | None = None

    @property
    def is_empty(self) -> bool:
        return self.camera_ids is None and self.captured_from is None and self.captured_to is None


@dataclass(frozen=True)
class NewItem:
    """An item to write: the embedding (D,) float32, L2-normalised, the crop's encoded bytes and metadata.

    `captured_at` must be timezone-aware. `width` and `height` are the crop's size in pixels.
    """

    id: str
    embedding: np.ndarray
    crop: bytes
    width: int
    height: int
    camera_id: str | None = None
    captured_at: datetime | None = None
    source: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class GalleryItem:
    """A stored item's metadata. `sha256` is the hex digest of the crop bytes, which name the crop on disk."""

    id: str
    camera_id: str | None
    captured_at: datetime | None
    source: str | None
    width: int
    height: int
    sha256: str
    extra: dict[str, Any]
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class WriteResult:
    """Outcome of one upserted item."""

    id: str
    status: Literal["created", "updated"]


@dataclass(frozen=True)
class SearchHit:
    """One ranked match: rank starts at 1; score is the inner product (cosine similarity), bigger is better."""

    item: GalleryItem
    score: float
    rank: int


@dataclass(frozen=True)
class Page:
    """One page of a listing; `next_cursor` is None on the last page."""

    items: list[GalleryItem]
    next_cursor: str | None


@dataclass(frozen=True)
class Manifest:
    """Facts recorded in the data directory about how the gallery was built."""

    model_identity: str
    dim: int
    schema_version: int
    backend: str
    backend_version: str
    count: int
    index_spec: str


@dataclass(frozen=True)
class ReindexReport:
    """Result of re-embedding every stored crop with another model."""

    rewritten: int
    failed: dict[str, str]
    model_identity: str
    dim: int


# Maps a batch of crop bytes to embeddings (N, D) float32, L2-normalised; used by `reindex`.
EmbedCrops = Callable[[Sequence[bytes]], np.ndarray]


class GalleryStore(abc.ABC):
    """A persistent gallery of embeddings, metadata and crops, searchable by inner product.

    Implementations are safe for concurrent use by many reader threads and writer threads in one
    process. Every write is durable when the call returns.
    """

    @property
    @abc.abstractmethod
    def manifest(self) -> Manifest:
        """Current manifest, with the item count as of this call."""

    @abc.abstractmethod
    def upsert(self, items: Sequence[NewItem]) -> list[WriteResult]:
        """Insert or replace items by id, all or nothing; one result per item, in order."""

    @abc.abstractmethod
    def delete(self, ids: Sequence[str]) -> list[str]:
        """Delete items by id; return the ids that existed and are now gone."""

    @abc.abstractmethod
    def get(self, item_id: str) -> GalleryItem:
        """Return one item's metadata; raise `ItemNotFoundError` for an unknown id."""

    @abc.abstractmethod
    def get_embedding(self, item_id: str) -> np.ndarray:
        """Return one item's stored embedding (D,); raise `ItemNotFoundError` for an unknown id."""

    @abc.abstractmethod
    def read_crop(self, item_id: str) -> bytes:
        """Return the crop bytes as ingested; raise `ItemNotFoundError` for an unknown id."""

    @abc.abstractmethod
    def list(
        self, *, cursor: str | None = None, limit: int = 100, filters: SearchFilters | None = None
    ) -> Page:
        """Return items in id order, `limit` at a time; pass `next_cursor` back for the next page."""

    @abc.abstractmethod
    def count(self, filters: SearchFilters | None = None) -> int:
        """Return the number of items, or of items matching `filters`."""

    @abc.abstractmethod
    def camera_ids(self) -> list[str]:
        """Return the distinct camera ids in the gallery, sorted."""

    @abc.abstractmethod
    def search(
        self, queries: np.ndarray, *, top_k: int, filters: SearchFilters | None = None
    ) -> list[list[SearchHit]]:
        """Rank the gallery for each query embedding of `queries` (Q, D).

        Returns Q lists of at most `top_k` hits, best first; fewer only when fewer items match.
        """

    @abc.abstractmethod
    def iter_crops(self, batch_size: int = 64) -> Iterator[list[tuple[str, bytes]]]:
        """Yield every stored (id, crop bytes) in batches, for re-embedding."""

    @abc.abstractmethod
    def reindex(
        self,
        embed: EmbedCrops,
        *,
        model_identity: str,
        dim: int,
        batch_size: int = 64,
        progress: Callable[[int, int], None] | None = None,
    ) -> ReindexReport:
        """Re-embed every stored crop with `embed` and swap the new embeddings in when all are done.

        Until the swap, searches see the old embeddings; afterwards the manifest records the new model
        identity and dimension. `progress(done, total)` is called after each batch.
        """

    @abc.abstractmethod
    def close(self) -> None:
        """Release files and locks; the store is unusable afterwards."""

    def __enter__(self) -> GalleryStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
