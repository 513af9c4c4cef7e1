"""The gallery: embeddings in FAISS, metadata in SQLite, crops on disk; no torch, no model code."""

from index.store import (
    EmbedCrops,
    GalleryError,
    GalleryItem,
    GalleryStore,
    InvalidCursorError,
    InvalidItemError,
    ItemNotFoundError,
    Manifest,
    ModelMismatchError,
    NewItem,
    Page,
    ReindexReport,
    SearchFilters,
    SearchHit,
    StoreCorruptError,
    WriteResult,
)

__all__ = [
    "EmbedCrops",
    "GalleryError",
    "GalleryItem",
    "GalleryStore",
    "InvalidCursorError",
    "InvalidItemError",
    "ItemNotFoundError",
    "Manifest",
    "ModelMismatchError",
    "NewItem",
    "Page",
    "ReindexReport",
    "SearchFilters",
    "SearchHit",
    "StoreCorruptError",
    "WriteResult",
]
