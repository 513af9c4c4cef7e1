"""The embedded gallery: FAISS for search, SQLite for items and embeddings, crops on disk.

Data directory layout::

    manifest.json     model identity, dimension, schema version, FAISS version, item count, index spec,
                      write generation, whether the last writer closed cleanly, and the record of the
                      saved index.faiss (generation, size, sha256). Written atomically.
    gallery.sqlite3   items, metadata and float32 embeddings: the source of truth (WAL mode, with its
                      -wal and -shm files beside it while open)
    index.faiss       the FAISS index, derived from gallery.sqlite3 and rebuilt from it when needed
    crops/ab/abcd...  crop bytes as ingested, named by their sha256 and shared by items with equal bytes
    writer.lock       the lock file of the one writer process

Durability: a write (`upsert`, `delete`, `reindex`) is durable when it returns. Crop files are written
to a temporary file, flushed, renamed and their directory flushed before the SQLite transaction that
references them commits. SQLite commits with `synchronous=FULL` in WAL mode, one transaction per call,
so a batch is all or nothing. A crop no longer referenced is deleted after the commit. A crash in
between leaves an orphan file, which the next open removes because the manifest then records that the
last writer did not close cleanly. The tests kill a writer with SIGKILL; surviving a power loss also
relies on the disk honouring fsync, which no test covers.

index.faiss may lag behind SQLite. It is saved on `close`, on `checkpoint`, after an index rebuild, and
after a write once the items written since the last save reach max(`persist_min_writes`,
`persist_fraction` × item count). On open, a missing, unreadable or mismatching file is rebuilt from
SQLite. A file saved a few writes ago is brought up to date instead: its labels are compared with
SQLite's and the difference is applied. Each repair is logged as a WARNING and recorded in
`last_open_report`.

Concurrency: one writer process per directory (an exclusive `flock` on writer.lock; a second writer
gets `StoreLockedError`). Any number of `read_only=True` stores may open the directory alongside it.
They search the FAISS index as of their opening (or their last `refresh`), read items from SQLite as
committed, and never write files: they repair a stale index in memory only. Inside a process the store is safe for concurrent threads: writes are serialised, searches
run in parallel under a readers-writer lock, and a write swaps SQLite and FAISS together under that
lock, so a search never sees one without the other. Each thread reads SQLite through its own connection.

Search: inner product on L2-normalised embeddings. "Flat" is exact. Exact and HNSW indexes record
deletes as tombstones that searches skip. Once tombstones exceed `max_tombstone_fraction` of the index,
an exact index drops them in one pass and an HNSW graph is rebuilt from SQLite. IVF indexes remove
deleted vectors at once. IVF specs search exactly (with a WARNING) until the gallery contains 39
embeddings per list, then train on the stored embeddings. The centroids are not retrained afterwards
except by `reindex` or by opening with another spec.

A filtered search scores the matching items exactly when at most `exact_filter_max` match, and
otherwise searches FAISS with an ID selector. When an approximate index returns fewer hits than
match, that query is re-ranked exactly, so a search returns `top_k` hits whenever at least `top_k`
items match. No FAISS padding (label -1, score -inf or -3.4e38) is ever returned.

Reindex re-embeds every crop into a second embeddings table in the same database while searches and
writes continue on the old one, then swaps tables, model identity and dimension in one SQLite
transaction and the FAISS index under the lock. A file-level swap of gallery.sqlite3 was avoided
because its WAL files and the connections of read-only processes would still refer to the old file.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from index import gallery_db
from index.cursor import decode_cursor, encode_cursor
from index.exact_search import exact_top_k
from index.faiss_index import BACKEND, SearchTuning, SpecInfo, inspect_spec
from index.faiss_maintenance import FaissMaintenanceMixin
from index.faiss_open import CROPS_DIR, OpenedDirectory, check_schema_and_identity, open_directory
from index.faiss_recovery import OpenReport, build_index
from index.faiss_reindex import FaissReindexMixin
from index.files import CropStore
from index.gallery_db import vector_to_blob, write_transaction
from index.locking import ReadWriteLock, WriterLockFile
from index.store import (
    SCHEMA_VERSION,
    GalleryError,
    GalleryItem,
    GalleryStore,
    InvalidConfigError,
    InvalidItemError,
    ItemNotFoundError,
    Manifest,
    NewItem,
    Page,
    SearchFilters,
    SearchHit,
    StoreCorruptError,
    StoreNotFoundError,
    WriteResult,
)
from index.validation import (
    PreparedItem,
    now_epoch_us,
    prepare_item,
    validate_filters,
    validate_item_id,
    validate_queries,
    validate_top_k,
)

logger = logging.getLogger(__name__)

LOCK_NAME = "writer.lock"
MAX_PAGE_SIZE = 1000


@dataclass(frozen=True)
class FaissStoreConfig:
    """Tuning of the FAISS store; the index spec itself is an argument of `FaissGalleryStore.open`."""

    # IVF lists probed per search, and the HNSW candidate list size (raised to top_k when smaller).
    ivf_nprobe: int = 32
    hnsw_ef_search: int = 128
    # Compact an exact index, or rebuild an HNSW graph, when deleted vectors exceed this fraction of it.
    max_tombstone_fraction: float = 0.25
    # A filter matching at most this many items is ranked exactly from SQLite instead of by FAISS.
    exact_filter_max: int = 4096
    # Save index.faiss after a write once max(persist_min_writes, persist_fraction × count) items changed.
    persist_min_writes: int = 10_000
    persist_fraction: float = 0.25
    # Threads that write crop files of one batch in parallel (their fsyncs are committed together).
    crop_write_threads: int = 8

    def __post_init__(self) -> None:
        positive = (
            "ivf_nprobe",
            "hnsw_ef_search",
            "exact_filter_max",
            "persist_min_writes",
            "crop_write_threads",
        )
        for name in positive:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidConfigError(f"FaissStoreConfig.{name} must be a positive integer, got {value!r}")
        for name in ("max_tombstone_fraction", "persist_fraction"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not 0.0 < value <= 1.0:
                raise InvalidConfigError(f"FaissStoreConfig.{name} must be in (0, 1], got {value!r}")

    @property
    def tuning(self) -> SearchTuning:
        return SearchTuning(ivf_nprobe=self.ivf_nprobe, hnsw_ef_search=self.hnsw_ef_search)


class FaissGalleryStore(FaissMaintenanceMixin, FaissReindexMixin, GalleryStore):
    """A `GalleryStore` in one data directory; create it with `FaissGalleryStore.open` or `open_store`."""

    def __init__(
        self,
        directory: Path,
        opened: OpenedDirectory,
        *,
        lock: WriterLockFile | None,
        info: SpecInfo,
        config: FaissStoreConfig,
    ) -> None:
        self.directory = directory
        self.last_open_report = opened.report
        self._db = opened.db
        self._lock = lock
        self._faiss = opened.faiss_index
        self._info = info
        self._config = config
        self._crops = CropStore(directory / CROPS_DIR, write_threads=config.crop_write_threads)
        self._model_identity = opened.meta["model_identity"]
        self._dim = int(opened.meta["dim"])
        self._embedding_version = int(opened.meta["embedding_version"])
        self._generation = int(opened.meta["generation"])
        self._cursor_secret = bytes.fromhex(opened.meta["cursor_secret"])
        self._index_record = opened.index_record
        self._writes_since_save = 0
        self._index_lock = ReadWriteLock()
        self._write_mutex = threading.RLock()
        self._reindex_running = threading.Lock()
        self._closed = False
        self._warned_untrained = False
        self._crop_removal_failed = False

    # Opening ----------------------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        path: str | Path,
        *,
        model_identity: str,
        dim: int,
        index_spec: str = "Flat",
        create: bool = True,
        read_only: bool = False,
        config: FaissStoreConfig | None = None,
    ) -> FaissGalleryStore:
        """Open (or create) the gallery in `path` for the model `model_identity` with `dim`-d embeddings.

        Raises:
            ModelMismatchError: the gallery was built with another identity or dimension.
            StoreLockedError: another writer has the directory open.
            StoreNotFoundError: no gallery exists and `create` is false or `read_only` is true.
            StoreCorruptError: the directory cannot be read or repaired.
            InvalidConfigError: `index_spec` or another argument is unsupported.
        """
        started = time.perf_counter()
        if not isinstance(model_identity, str) or not model_identity:
            raise InvalidConfigError(f"model_identity must be a non-empty string, got {model_identity!r}")
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise InvalidConfigError(f"dim must be a positive integer, got {dim!r}")
        config = config if config is not None else FaissStoreConfig()
        info = inspect_spec(index_spec, dim)
        directory = Path(path)
        if directory.exists() and not directory.is_dir():
            raise InvalidConfigError(f"gallery path {directory} is a file; pass a directory")
        if not directory.exists():
            if read_only or not create:
                raise StoreNotFoundError(f"no gallery at {directory}; ingest crops to create one there")
            directory.mkdir(parents=True)
        lock = None if read_only else WriterLockFile(directory / LOCK_NAME)
        if lock is not None:
            lock.acquire()
        try:
            opened = open_directory(
                directory,
                read_only=read_only,
                create=create,
                model_identity=model_identity,
                dim=dim,
                info=info,
            )
        except BaseException:
            if lock is not None:
                lock.release()
            raise
        for repair in opened.report.repairs:
            logger.warning("gallery %s: %s", directory, repair)
        store = cls(directory, opened, lock=lock, info=info, config=config)
        if lock is not None:
            store._finish_writable_open()
        logger.info(
            "opened gallery %s%s: %d items, model %s (%d-d), index %s (%s), %.2f s",
            directory,
            " read-only" if read_only else "",
            store._faiss.live_count,
            model_identity,
            dim,
            store._faiss.built_spec,
            opened.report.index_source,
            time.perf_counter() - started,
        )
        store._warn_if_untrained()
        return store

    def _finish_writable_open(self) -> None:
        """Save a rebuilt index, mark the manifest open (not closed cleanly) and train IVF if due."""
        try:
            with self._write_mutex:
                if self.last_open_report.index_source != "file":
                    self._save_index()
                self._write_manifest(closed_cleanly=False)
                self._maybe_train()
        except BaseException:
            self._db.close()
            self._release_lock()
            raise

    # Reads ------------------------------------------------------------------------------------------

    @property
    def manifest(self) -> Manifest:
        self._check_open()
        return Manifest(
            model_identity=self._model_identity,
            dim=self._dim,
            schema_version=SCHEMA_VERSION,
            backend=BACKEND,
            backend_version=faiss.__version__,
            count=self._db.count(None),
            index_spec=self._info.spec,
        )

    @property
    def active_index_spec(self) -> str:
        """Spec of the FAISS structure searched now: the configured spec, or "Flat" while it awaits training."""
        return self._faiss.built_spec

    def get(self, item_id: str) -> GalleryItem:
        self._check_open()
        item = self._db.get_item(validate_item_id(item_id))
        if item is None:
            raise ItemNotFoundError(f"no item with id {item_id!r} in the gallery")
        return item

    def get_embedding(self, item_id: str) -> np.ndarray:
        self._check_open()
        vector = self._db.get_vector(validate_item_id(item_id), self._dim)
        if vector is None:
            raise ItemNotFoundError(f"no item with id {item_id!r} in the gallery")
        return vector

    def read_crop(self, item_id: str) -> bytes:
        self._check_open()
        sha = self._db.get_sha256(validate_item_id(item_id))
        if sha is None:
            raise ItemNotFoundError(f"no item with id {item_id!r} in the gallery")
        data = self._crops.read(sha)
        if data is not None:
            return data
        if self._db.get_sha256(item_id) != sha:  # deleted or replaced while the file was being read
            raise ItemNotFoundError(f"no item with id {item_id!r} in the gallery")
        raise StoreCorruptError(
            f"crop {sha} of item {item_id!r} is missing or damaged under {self._crops.root}; re-ingest the item"
        )

    def list(
        self, *, cursor: str | None = None, limit: int = 100, filters: SearchFilters | None = None
    ) -> Page:
        self._check_open()
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE_SIZE:
            raise InvalidItemError(f"limit must be an integer from 1 to {MAX_PAGE_SIZE}, got {limit!r}")
        filters = validate_filters(filters)
        after = decode_cursor(self._cursor_secret, cursor, filters) if cursor is not None else None
        items = self._db.list_after(after, limit + 1, filters)
        if len(items) <= limit:
            return Page(items=items, next_cursor=None)
        page = items[:limit]
        return Page(items=page, next_cursor=encode_cursor(self._cursor_secret, page[-1].id, filters))

    def count(self, filters: SearchFilters | None = None) -> int:
        self._check_open()
        return self._db.count(validate_filters(filters))

    def camera_ids(self) -> list[str]:
        self._check_open()
        return self._db.camera_ids()

    def iter_crops(self, batch_size: int = 64) -> Iterator[list[tuple[str, bytes]]]:
        self._check_open()
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InvalidItemError(f"batch_size must be a positive integer, got {batch_size!r}")
        after: str | None = None
        while rows := self._db.crops_after(after, batch_size):
            batch = []
            for item_id, _label, sha, _generation in rows:
                data = self._crops.read(sha)
                if data is None:
                    logger.error("crop %s of item %r is missing or damaged; skipped", sha, item_id)
                    continue
                batch.append((item_id, data))
            after = rows[-1][0]
            if batch:
                yield batch

    # Search -----------------------------------------------------------------------------------------

    def search(
        self, queries: np.ndarray, *, top_k: int, filters: SearchFilters | None = None
    ) -> list[list[SearchHit]]:
        self._check_open()
        top_k = validate_top_k(top_k)
        filters = validate_filters(filters)
        with self._index_lock.read():
            self._check_open()
            queries = validate_queries(queries, dim=self._dim)  # inside the lock: reindex may change dim
            if queries.shape[0] == 0:
                return []
            ranked = self._rank(queries, top_k, filters)
            labels = sorted({int(label) for row_labels, _ in ranked for label in row_labels})
            items = self._db.items_by_label(labels)
        return [_hits(row_labels, row_scores, items) for row_labels, row_scores in ranked]

    def _rank(
        self, queries: np.ndarray, top_k: int, filters: SearchFilters | None
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        allowed = None if filters is None else self._db.labels_matching(filters)
        matching = self._faiss.live_count if allowed is None else int(allowed.size)
        if matching == 0:
            return [(np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)) for _ in queries]
        k = min(top_k, matching)
        if allowed is not None and matching <= self._config.exact_filter_max:
            return exact_top_k(queries, self._db.iter_vectors(self._dim, filters=filters), k)
        ranked = self._faiss.search(queries, k, allowed=allowed, tuning=self._config.tuning)
        short = [row for row, (labels, _) in enumerate(ranked) if labels.size < k]
        if short:
            # An approximate index explored too little of the matching set; rank those queries exactly.
            logger.debug(
                "%d of %d queries got fewer than %d hits from %s; ranking them exactly",
                len(short),
                len(ranked),
                k,
                self._faiss.built_spec,
            )
            exact = exact_top_k(queries[short], self._db.iter_vectors(self._dim, filters=filters), k)
            for row, result in zip(short, exact, strict=True):
                ranked[row] = result
        return ranked

    # Writes -----------------------------------------------------------------------------------------

    def upsert(self, items: Sequence[NewItem]) -> list[WriteResult]:
        self._check_writable()
        prepared = [
            prepare_item(item, dim=self._dim, position=position) for position, item in enumerate(items)
        ]
        if not prepared:
            return []
        with self._write_mutex:
            self._check_writable()
            if prepared[0].embedding.shape[0] != self._dim:
                raise InvalidItemError(
                    f"embeddings are {prepared[0].embedding.shape[0]}-d but the gallery now stores {self._dim}-d "
                    "(it was reindexed meanwhile); embed with the new model"
                )
            latest = {item.id: item for item in prepared}  # a repeated id: the last one is stored
            written = self._crops.write_many({item.sha256: item.crop for item in latest.values()})
            try:
                existed, replaced_digests = self._commit_upsert(latest)
            except BaseException:
                self._remove_unreferenced_crops(written)
                raise
            self._remove_unreferenced_crops(replaced_digests)
            self._after_write(len(latest))
        return _write_results(prepared, existed)

    def _commit_upsert(self, latest: dict[str, PreparedItem]) -> tuple[set[str], list[str]]:
        """Write the items in one transaction and apply them to FAISS; return (ids that existed, old digests)."""
        now = now_epoch_us()
        with write_transaction(self._writer()) as connection:
            existing = gallery_db.existing_rows(connection, list(latest))
            old_labels = np.array([row[0] for row in existing.values()], dtype=np.int64)
            if old_labels.size:
                gallery_db.delete_labels(connection, old_labels.tolist())
            first_label = gallery_db.next_label(connection)
            labels = np.arange(first_label, first_label + len(latest), dtype=np.int64)
            generation = gallery_db.read_meta_int(connection, "generation") + 1
            connection.executemany(
                "INSERT INTO items (label, id, camera_id, captured_at_us, source, width, height, sha256, extra, "
                "created_at_us, updated_at_us, generation) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        int(label),
                        item.id,
                        item.camera_id,
                        item.captured_at_us,
                        item.source,
                        item.width,
                        item.height,
                        item.sha256,
                        item.extra_json,
                        existing.get(item.id, (0, "", now))[2],
                        now,
                        generation,
                    )
                    for label, item in zip(labels, latest.values(), strict=True)
                ],
            )
            connection.executemany(
                "INSERT INTO embeddings (label, vector) VALUES (?, ?)",
                [
                    (int(label), vector_to_blob(item.embedding))
                    for label, item in zip(labels, latest.values(), strict=True)
                ],
            )
            gallery_db.bump_generation(connection, len(latest) - len(existing))
            vectors = np.stack([item.embedding for item in latest.values()])
            with self._index_lock.write():
                connection.execute("COMMIT")
                self._generation = generation
                self._apply_to_index(remove=old_labels, add_labels=labels, add_vectors=vectors)
        return set(existing), [row[1] for row in existing.values()]

    def delete(self, ids: Sequence[str]) -> list[str]:
        self._check_writable()
        unique = list(dict.fromkeys(validate_item_id(item_id) for item_id in ids))
        if not unique:
            return []
        with self._write_mutex:
            self._check_writable()
            with write_transaction(self._writer()) as connection:
                existing = gallery_db.existing_rows(connection, unique)
                if not existing:
                    return []
                labels = np.array([row[0] for row in existing.values()], dtype=np.int64)
                gallery_db.delete_labels(connection, labels.tolist())
                generation = gallery_db.bump_generation(connection, -len(existing))
                with self._index_lock.write():
                    connection.execute("COMMIT")
                    self._generation = generation
                    self._apply_to_index(remove=labels)
            self._remove_unreferenced_crops([row[1] for row in existing.values()])
            self._after_write(len(existing))
        return [item_id for item_id in unique if item_id in existing]

    def _apply_to_index(
        self,
        *,
        remove: np.ndarray,
        add_labels: np.ndarray | None = None,
        add_vectors: np.ndarray | None = None,
    ) -> None:
        """Apply a committed write to FAISS; on failure rebuild it from SQLite, which already has the write.

        The caller holds the index write lock.
        """
        try:
            self._faiss.remove(remove)
            if add_labels is not None and add_vectors is not None:
                self._faiss.add(add_labels, add_vectors)
        except Exception:
            logger.exception(
                "updating the FAISS index failed after the SQLite commit; rebuilding it from SQLite"
            )
            self._faiss = build_index(self._db, self._info, self._dim)

    def _remove_unreferenced_crops(self, digests: Sequence[str]) -> None:
        if not digests:
            return
        try:
            unreferenced = gallery_db.unreferenced_digests(self._writer(), list(digests))
            self._crops.remove(unreferenced)
        except Exception:
            # Nothing is lost by leaving them: close() then marks the manifest so the next open removes orphans.
            self._crop_removal_failed = True
            logger.exception("removing %d unreferenced crop files failed; they stay on disk", len(digests))

    # Read-only refresh -------------------------------------------------------------------------------

    def refresh(self) -> None:
        """Bring a read-only store's FAISS index up to the writes committed since it was opened.

        A writer's index is always current, so this does nothing for it. Raises `ModelMismatchError`
        when the gallery was reindexed to another model meanwhile.
        """
        self._check_open()
        if self._lock is not None:
            return
        meta = self._db.meta()
        check_schema_and_identity(self.directory, meta, model_identity=self._model_identity, dim=self._dim)
        with self._index_lock.write():
            if int(meta["embedding_version"]) != self._embedding_version:
                self._faiss = build_index(self._db, self._info, self._dim)
                self._embedding_version = int(meta["embedding_version"])
            else:
                self._faiss.sync_labels(
                    self._db.live_labels(), lambda labels: self._db.vectors_for_labels(labels, self._dim)
                )
            self._generation = int(meta["generation"])

    # Lifecycle --------------------------------------------------------------------------------------

    def close(self) -> None:
        """Save index.faiss if it lags, mark the manifest closed cleanly and release files and the lock."""
        with self._write_mutex:
            if self._closed:
                return
            try:
                if self._lock is not None:
                    if self._index_record is None or self._index_record.generation != self._generation:
                        self._save_index()
                    self._write_manifest(closed_cleanly=not self._crop_removal_failed)
            finally:
                with self._index_lock.write():
                    self._closed = True
                self._db.close()
                self._release_lock()
        logger.info("closed gallery %s", self.directory)

    def _release_lock(self) -> None:
        if self._lock is not None:
            self._lock.release()

    def _check_open(self) -> None:
        if self._closed:
            raise GalleryError(f"the gallery store for {self.directory} is closed; open it again")

    def _check_writable(self) -> None:
        self._check_open()
        if self._lock is None:
            raise GalleryError(
                f"the gallery store for {self.directory} is read-only; open it with read_only=False"
            )

    def _writer(self) -> gallery_db.sqlite3.Connection:
        assert self._db.writer is not None
        return self._db.writer


def open_store(
    path: str | Path,
    *,
    model_identity: str,
    dim: int,
    index_spec: str = "Flat",
    create: bool = True,
    read_only: bool = False,
    config: FaissStoreConfig | None = None,
) -> FaissGalleryStore:
    """Open the FAISS gallery in `path`; see `FaissGalleryStore.open`."""
    return FaissGalleryStore.open(
        path,
        model_identity=model_identity,
        dim=dim,
        index_spec=index_spec,
        create=create,
        read_only=read_only,
        config=config,
    )


def _hits(labels: np.ndarray, scores: np.ndarray, items: dict[int, GalleryItem]) -> list[SearchHit]:
    hits = []
    for label, score in zip(labels, scores, strict=True):
        item = items.get(int(label))
        if item is None:  # only a read-only store can see a label deleted since it loaded its index
            continue
        hits.append(SearchHit(item=item, score=float(score), rank=len(hits) + 1))
    return hits


def _write_results(prepared: Sequence[PreparedItem], existed: set[str]) -> list[WriteResult]:
    """Return one result per input item: "updated" when the id existed or came earlier in the batch."""
    seen = set(existed)
    results = []
    for item in prepared:
        results.append(WriteResult(id=item.id, status="updated" if item.id in seen else "created"))
        seen.add(item.id)
    return results


__all__ = ["FaissGalleryStore", "FaissStoreConfig", "OpenReport", "open_store"]
