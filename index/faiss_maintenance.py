"""Upkeep of the FAISS gallery's index after writes: IVF training, tombstone compaction, saving.

`FaissGalleryStore` calls `_after_write` at the end of every write, under its write mutex. The
methods here decide when to train an IVF spec, drop tombstones, and save index.faiss with the manifest.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import faiss

from index.faiss_index import BACKEND
from index.faiss_recovery import INDEX_NAME, build_index
from index.manifest import MANIFEST_NAME, IndexFileRecord, ManifestRecord, write_manifest
from index.store import SCHEMA_VERSION

if TYPE_CHECKING:
    from index.faiss_store import FaissGalleryStore

logger = logging.getLogger(__name__)


class FaissMaintenanceMixin:
    """Index upkeep of `FaissGalleryStore`: training, compaction and saving index.faiss and the manifest."""

    def _after_write(self: FaissGalleryStore, changed: int) -> None:
        self._writes_since_save += changed
        threshold = max(
            self._config.persist_min_writes, self._config.persist_fraction * self._faiss.live_count
        )
        if not self._maybe_train() and not self._maybe_compact() and self._writes_since_save >= threshold:
            self._save_index()
            self._write_manifest(closed_cleanly=False)

    def _maybe_train(self: FaissGalleryStore) -> bool:
        """Replace the exact stand-in by the trained spec once enough embeddings exist; return whether done."""
        count = self._faiss.live_count
        if not self._faiss.is_exact_fallback or count < self._info.training_threshold:
            return False
        self._replace_index(f"training {self._info.spec} on the stored embeddings ({count} items)")
        return True

    def _maybe_compact(self: FaissGalleryStore) -> bool:
        """Drop tombstones once they pass the configured fraction; return whether the index was rebuilt.

        An exact index is compacted in place (one pass over its vectors, under the index lock); an HNSW
        graph is rebuilt from SQLite and saved.
        """
        if self._faiss.tombstone_fraction <= self._config.max_tombstone_fraction:
            return False
        with self._index_lock.write():
            if self._faiss.compact():
                return False
        self._replace_index(
            f"rebuilding the HNSW graph: {self._faiss.tombstones.size} of its {self._faiss.ntotal} vectors are deleted"
        )
        return True

    def _replace_index(self: FaissGalleryStore, reason: str) -> None:
        # NOTE: the build runs inside the write call that crossed the threshold, so that call and other
        # writers wait for it while searches go on. Building HNSW32 over 1M 512-d embeddings took 19
        # minutes on a loaded 2-core machine (bench/bench_index.py). A background build would also have
        # to replay the writes made meanwhile.
        started = time.perf_counter()
        rebuilt = build_index(self._db, self._info, self._dim)  # writes are excluded by the write mutex
        with self._index_lock.write():
            self._faiss = rebuilt
        logger.info("%s took %.1f s", reason, time.perf_counter() - started)
        self._save_index()
        self._write_manifest(closed_cleanly=False)

    def _warn_if_untrained(self: FaissGalleryStore) -> None:
        if self._faiss.is_exact_fallback and not self._warned_untrained:
            self._warned_untrained = True
            logger.warning(
                "index spec %s needs %d embeddings to train; the gallery has %d, so searches are exact until then",
                self._info.spec,
                self._info.training_threshold,
                self._faiss.live_count,
            )

    def checkpoint(self: FaissGalleryStore) -> None:
        """Save index.faiss and manifest.json now, so the next open needs no catch-up."""
        self._check_writable()
        with self._write_mutex:
            self._save_index()
            self._write_manifest(closed_cleanly=False)

    def _save_index(self: FaissGalleryStore) -> None:
        """Write index.faiss and record it; the caller holds the write mutex, so nothing changes meanwhile."""
        started = time.perf_counter()
        with self._index_lock.read():
            size_bytes, sha256 = self._faiss.save(self.directory / INDEX_NAME)
            self._index_record = IndexFileRecord(
                generation=self._generation,
                model_identity=self._model_identity,
                dim=self._dim,
                embedding_version=self._embedding_version,
                built_spec=self._faiss.built_spec,
                ntotal=self._faiss.ntotal,
                live_count=self._faiss.live_count,
                size_bytes=size_bytes,
                sha256=sha256,
            )
        self._writes_since_save = 0
        logger.debug("saved index.faiss (%d bytes) in %.2f s", size_bytes, time.perf_counter() - started)

    def _write_manifest(self: FaissGalleryStore, *, closed_cleanly: bool) -> None:
        write_manifest(
            self.directory / MANIFEST_NAME,
            ManifestRecord(
                model_identity=self._model_identity,
                dim=self._dim,
                schema_version=SCHEMA_VERSION,
                backend=BACKEND,
                backend_version=faiss.__version__,
                count=self._db.count(None),
                index_spec=self._info.spec,
                generation=self._generation,
                closed_cleanly=closed_cleanly,
                index_file=self._index_record,
                updated_at=datetime.now(UTC).isoformat(),
            ),
        )
