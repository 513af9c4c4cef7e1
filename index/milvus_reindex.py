"""The reindex of the Milvus gallery: re-embed every crop into the next generation's collection.

`MilvusReindexMixin` is the reindex half of `MilvusGalleryStore`, kept in its own module. It uses the
store's client, crops, locks and row helpers. The steps:

1. create the next generation's collection (`<name>__g<N+1>`) with the new dimension and identity;
2. copy every item page by page with the new embedding, while searches and writes go on against the
   current collection;
3. under the write lock, embed again the items written since the start, delete the ids this process
   deleted, check that no item went missing, move the alias and drop the previous collection.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from index.milvus_connection import create_collection, milvus_errors
from index.milvus_schema import (
    METADATA_FIELDS,
    PROPERTY_CURSOR_SECRET,
    PROPERTY_GENERATION,
    CollectionConfig,
    check_model,
    new_properties,
)
from index.reindex import embed_checked
from index.store import EmbedCrops, GalleryError, InvalidConfigError, ReindexReport
from index.validation import now_epoch_us

if TYPE_CHECKING:
    from pymilvus import MilvusClient

    from index.files import CropStore

logger = logging.getLogger(__name__)

# How far back from its start a reindex looks for items written while it ran, for writers whose clock
# lags this process' clock.
REINDEX_CLOCK_SKEW_US = 5_000_000


class MilvusReindexMixin:
    """`reindex` for `MilvusGalleryStore`; see the module docstring."""

    # Set by MilvusGalleryStore.__init__.
    _client: MilvusClient
    _name: str
    _collection: str
    _crops: CropStore
    _collection_config: CollectionConfig
    _properties: dict[str, str]
    _write_lock: threading.RLock
    _reindex_running: threading.Lock
    _deleted_during_reindex: set[str] | None

    # Provided by MilvusGalleryStore.
    model_identity: str
    dim: int
    _check_open: Callable[[], None]
    count: Callable[..., int]
    _rows_after: Callable[..., list[dict[str, Any]]]
    _existing: Callable[..., dict[str, dict[str, Any]]]
    _count: Callable[[str, str], int]
    _write_rows: Callable[[str, list[dict[str, Any]]], None]
    _delete_ids: Callable[..., None]
    _remove_unreferenced_crops: Callable[[set[str]], None]
    _refresh_collection: Callable[[], None]

    def reindex(
        self,
        embed: EmbedCrops,
        *,
        model_identity: str,
        dim: int,
        batch_size: int = 64,
        progress: Callable[[int, int], None] | None = None,
    ) -> ReindexReport:
        """Re-embed every crop into the next generation's collection, then move the alias to it.

        Searches and writes go on against the current collection while the crops are embedded. Then,
        under the write lock, items written since the start are embedded again, items this process
        deleted are removed, and the alias moves. Items whose crop is missing or fails to embed are
        reported in `failed` and deleted, since they have no embedding of the new model.
        """
        self._check_open()
        check_model(model_identity, dim)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InvalidConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
        if not self._reindex_running.acquire(blocking=False):
            raise GalleryError(
                f"a reindex of the gallery {self._name!r} is already running; wait for it to finish"
            )
        try:
            return self._reindex(
                embed, model_identity=model_identity, dim=dim, batch_size=batch_size, progress=progress
            )
        finally:
            self._deleted_during_reindex = None
            self._reindex_running.release()

    def _reindex(
        self,
        embed: EmbedCrops,
        *,
        model_identity: str,
        dim: int,
        batch_size: int,
        progress: Callable[[int, int], None] | None,
    ) -> ReindexReport:
        started = time.perf_counter()
        with self._write_lock:
            started_us = now_epoch_us()
            self._deleted_during_reindex = set()
            total = self.count()
        target = self._create_next_generation(model_identity, dim)
        logger.info(
            "reindexing %d items of %r into %s, model %s (%d-d)",
            total,
            self._name,
            target,
            model_identity,
            dim,
        )
        try:
            failed: dict[str, tuple[str, str]] = {}  # id -> (message, crop sha256)
            done = 0
            after: str | None = None
            while rows := self._rows_after(self._name, after, batch_size, METADATA_FIELDS, ""):
                after = str(rows[-1]["id"])
                self._write_reembedded(target, rows, embed, dim=dim, failed=failed)
                done += len(rows)
                if progress is not None:
                    progress(done, total)
            with self._write_lock:
                self._catch_up(
                    target, embed, since_us=started_us, dim=dim, batch_size=batch_size, failed=failed
                )
                failed = self._finish_failed(target, failed)
                self._swap_alias(target)
                self._remove_unreferenced_crops({sha for _message, sha in failed.values()})
        except BaseException:
            with milvus_errors(f"drop the unfinished collection {target!r}"):
                self._client.drop_collection(target)
            raise
        failures = {item_id: message for item_id, (message, _sha) in failed.items()}
        if failures:
            logger.warning(
                "reindex removed %d items whose crops could not be embedded: %s",
                len(failures),
                ", ".join(repr(item_id) for item_id in list(failures)[:20]),
            )
        rewritten = self.count()
        logger.info(
            "reindexed %d items to model %s (%d-d) in %.1f s; %d failed",
            rewritten,
            model_identity,
            dim,
            time.perf_counter() - started,
            len(failures),
        )
        return ReindexReport(rewritten=rewritten, failed=failures, model_identity=model_identity, dim=dim)

    def _create_next_generation(self, model_identity: str, dim: int) -> str:
        generation = int(self._properties.get(PROPERTY_GENERATION, "1")) + 1
        target = f"{self._name}__g{generation}"
        properties = new_properties(
            model_identity=model_identity,
            dim=dim,
            generation=generation,
            index_spec=self._collection_config.spec,
            cursor_secret=self._properties.get(PROPERTY_CURSOR_SECRET),
        )
        with milvus_errors(f"create the collection {target!r}"):
            if self._client.has_collection(target):  # left by a reindex that was interrupted
                self._client.drop_collection(target)
            create_collection(
                self._client, target, dim=dim, config=self._collection_config, properties=properties
            )
        return target

    def _write_reembedded(
        self,
        target: str,
        rows: list[dict[str, Any]],
        embed: EmbedCrops,
        *,
        dim: int,
        failed: dict[str, tuple[str, str]],
    ) -> None:
        """Embed the crops of `rows` and write them with the new embeddings to `target`; record failures."""
        readable: list[tuple[dict[str, Any], bytes]] = []
        for row in rows:
            sha = str(row["sha256"])
            data = self._crops.read(sha)
            if data is None:
                failed[str(row["id"])] = (f"crop {sha} is missing or damaged", sha)
            else:
                readable.append((row, data))
        if not readable:
            return
        ids = [str(row["id"]) for row, _ in readable]
        embeddings, failures = embed_checked(embed, ids, [data for _, data in readable], dim=dim)
        for row, _ in readable:
            item_id = str(row["id"])
            if item_id in failures:
                failed[item_id] = (failures[item_id], str(row["sha256"]))
            else:
                failed.pop(item_id, None)
        self._write_rows(
            target,
            [
                {**row, "embedding": embeddings[str(row["id"])].tolist()}
                for row, _ in readable
                if str(row["id"]) in embeddings
            ],
        )

    def _catch_up(
        self,
        target: str,
        embed: EmbedCrops,
        *,
        since_us: int,
        dim: int,
        batch_size: int,
        failed: dict[str, tuple[str, str]],
    ) -> None:
        """Apply to `target` what was written since the reindex started; the caller has the write lock.

        Items written since `since_us` (less `REINDEX_CLOCK_SKEW_US`, for writers on other machines) are
        embedded again; ids this process deleted are deleted.
        """
        # NOTE: an update from a process whose clock lags by more than REINDEX_CLOCK_SKEW_US is missed.
        changed_since = f"updated_at >= {since_us - REINDEX_CLOCK_SKEW_US}"
        after: str | None = None
        caught_up = 0
        while rows := self._rows_after(self._name, after, batch_size, METADATA_FIELDS, changed_since):
            after = str(rows[-1]["id"])
            self._write_reembedded(target, rows, embed, dim=dim, failed=failed)
            caught_up += len(rows)
        deleted = sorted(self._deleted_during_reindex or ())
        self._delete_ids(target, deleted)
        for item_id in deleted:
            failed.pop(item_id, None)
        if caught_up or deleted:
            logger.info(
                "reindex: %d items written and %d deleted while it ran were applied", caught_up, len(deleted)
            )

    def _finish_failed(self, target: str, failed: dict[str, tuple[str, str]]) -> dict[str, tuple[str, str]]:
        """Return the failures of items that still exist, after checking that no item went missing."""
        live = self._existing(self._name, list(failed), ["id"])
        failed = {item_id: entry for item_id, entry in failed.items() if item_id in live}
        current = self._count(self._name, "")
        if current and len(failed) == current:
            item_id, (message, _sha) = next(iter(failed.items()))
            raise GalleryError(
                f"reindex failed for all {current} items (first: {item_id!r}: {message}); the gallery keeps model "
                f"{self.model_identity} ({self.dim}-d). Check the embed function"
            )
        with milvus_errors(f"flush {target!r}"):
            self._client.flush(target)
        copied = self._count(target, "")
        if copied + len(failed) != current:
            raise GalleryError(
                f"gallery {self._name!r} has {current} items, but the reindex copied {copied} and {len(failed)} "
                "failed: another process deleted items while it ran. Stop the other writers and run the reindex again"
            )
        return failed

    def _swap_alias(self, target: str) -> None:
        """Point the gallery alias at `target` and drop the previous collection."""
        old = self._collection
        with milvus_errors(f"move the alias {self._name!r} to {target!r}"):
            self._client.load_collection(target)
            self._client.alter_alias(target, self._name)
        self._refresh_collection()
        with milvus_errors(f"drop the previous collection {old!r}"):
            self._client.drop_collection(old)
