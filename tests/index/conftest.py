"""Fixtures of the gallery store tests: one `store_factory` per backend.

Tests written against `store_factory` run on every backend in `BACKENDS`. Tests of one backend's
internals (FAISS file repair, index specs, the crash test) live in files named after that backend.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from index.faiss_store import FaissGalleryStore
from index.store import GalleryStore

# Milvus runs on Milvus Lite, a local directory served in-process; its cases carry the `milvus` marker.
BACKENDS = ["faiss", pytest.param("milvus", marks=pytest.mark.milvus)]
# Options of FaissGalleryStore.open that the Milvus store does not have; a test passing one is FAISS-only.
FAISS_ONLY_OPTIONS = frozenset({"index_spec", "read_only", "config"})
MODEL_IDENTITY = "test-model-a"
DIM = 32

StoreFactory = Callable[..., GalleryStore]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def store_factory(backend: str, tmp_path: Path) -> Iterator[StoreFactory]:
    """Return `make(location="gallery", *, model_identity=..., dim=..., **options)`, opening a store.

    The same location reopens the same gallery. Every store opened is closed after the test.
    """
    opened: list[GalleryStore] = []

    def make(
        location: str = "gallery", *, model_identity: str = MODEL_IDENTITY, dim: int = DIM, **options: Any
    ) -> GalleryStore:
        if backend == "milvus":
            store = _open_milvus(tmp_path / location, model_identity=model_identity, dim=dim, **options)
        elif backend == "faiss":
            store = FaissGalleryStore.open(
                tmp_path / location, model_identity=model_identity, dim=dim, **options
            )
        else:
            raise AssertionError(f"no store factory for backend {backend!r}")
        opened.append(store)
        return store

    yield make
    for store in reversed(opened):
        store.close()


def _open_milvus(directory: Path, *, model_identity: str, dim: int, **options: Any) -> GalleryStore:
    """Open a Milvus Lite gallery in `directory` (database `milvus.db`, crops in `crops/`)."""
    from index.milvus_store import open_milvus_store

    faiss_only = sorted(FAISS_ONLY_OPTIONS & options.keys())
    if faiss_only:
        pytest.skip(f"{', '.join(faiss_only)}: options of the FAISS store only")
    directory.mkdir(parents=True, exist_ok=True)
    return open_milvus_store(
        str(directory / "milvus.db"),
        model_identity=model_identity,
        dim=dim,
        crops_dir=directory / "crops",
        **options,
    )


@pytest.fixture
def faiss_factory(tmp_path: Path) -> Iterator[Callable[..., FaissGalleryStore]]:
    """Return `make(location="gallery", **options)` opening a `FaissGalleryStore` in tmp_path."""
    opened: list[FaissGalleryStore] = []

    def make(
        location: str = "gallery", *, model_identity: str = MODEL_IDENTITY, dim: int = DIM, **options: Any
    ) -> FaissGalleryStore:
        store = FaissGalleryStore.open(tmp_path / location, model_identity=model_identity, dim=dim, **options)
        opened.append(store)
        return store

    yield make
    for store in reversed(opened):
        store.close()
