"""Reindex of the FAISS gallery: re-embed every stored crop with another model and swap atomically.

The new embeddings go into a second table of the same SQLite database while searches and writes
continue on the old one. Items written meanwhile are embedded in a catch-up pass under the write
mutex. The swap then replaces the embeddings table, model identity and dimension in one SQLite
transaction, and the FAISS index under the index lock. A crash therefore leaves either the old gallery
or the new one, and the next open discards an unfinished reindex.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from index import gallery_db
from index.faiss_index import SpecInfo, inspect_spec
from index.faiss_open import discard_unfinished_reindex
from index.faiss_recovery import build_index
from index.gallery_db import EMBEDDINGS_NEXT, vector_to_blob, write_transaction
from index.reindex import embed_checked
from index.store import EmbedCrops, GalleryError, InvalidConfigError, ReindexReport

if TYPE_CHECKING:
    from index.faiss_store import FaissGalleryStore

logger = logging.getLogger(__name__)


class FaissReindexMixin:
    """The `reindex` method of `FaissGalleryStore`, kept apart because it is a long job of its own."""

    def reindex(
        self: FaissGalleryStore,
        embed: EmbedCrops,
        *,
        model_identity: str,
        dim: int,
        batch_size: int = 64,
        progress: Callable[[int, int], None] | None = None,
    ) -> ReindexReport:
        self._check_writable()
        if not isinstance(model_identity, str) or not model_identity:
            raise InvalidConfigError(f"model_identity must be a non-empty string, got {model_identity!r}")
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise InvalidConfigError(f"dim must be a positive integer, got {dim!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InvalidConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
        info = inspect_spec(self._info.spec, dim)
        if not self._reindex_running.acquire(blocking=False):
            raise GalleryError(f"a reindex of {self.directory} is already running; wait for it to finish")
        try:
            return self._reindex(
                embed,
                info=info,
                model_identity=model_identity,
                dim=dim,
                batch_size=batch_size,
                progress=progress,
            )
        except BaseException:
            with self._write_mutex:
                if not self._closed:
                    discard_unfinished_reindex(self._db)
            raise
        finally:
            self._reindex_running.release()

    def _reindex(
        self: FaissGalleryStore,
        embed: EmbedCrops,
        *,
        info: SpecInfo,
        model_identity: str,
        dim: int,
        batch_size: int,
        progress: Callable[[int, int], None] | None,
    ) -> ReindexReport:
        started = time.perf_counter()
        with self._write_mutex:
            total = self._db.count(None)
            _start_reindex(self._writer(), model_identity=model_identity, dim=dim)
        logger.info(
            "reindexing %d items of %s to model %s (%d-d)", total, self.directory, model_identity, dim
        )
        failed: dict[int, tuple[str, str]] = {}
        done = 0
        after: str | None = None
        while rows := self._db.crops_after(after, batch_size):
            after = rows[-1][0]
            failed.update(self._reindex_rows(embed, rows, dim=dim))
            done += len(rows)
            if progress is not None:
                progress(done, total)
        with self._write_mutex:
            self._check_writable()
            failed.update(self._reindex_catch_up(embed, dim=dim, batch_size=batch_size, failed=failed))
            report = self._swap_reindexed(info, model_identity=model_identity, dim=dim, failed=failed)
        logger.info(
            "reindexed %d items to model %s (%d-d) in %.1f s; %d failed",
            report.rewritten,
            model_identity,
            dim,
            time.perf_counter() - started,
            len(report.failed),
        )
        return report

    def _reindex_rows(
        self: FaissGalleryStore, embed: EmbedCrops, rows: Sequence[tuple[str, int, str, int]], *, dim: int
    ) -> dict[int, tuple[str, str]]:
        """Embed (id, label, sha256, generation) rows into the next embeddings table; return failures.

        Failures map the label to (id, message).
        """
        failed: dict[int, tuple[str, str]] = {}
        labels: dict[str, int] = {}
        crops: list[bytes] = []
        for item_id, label, sha, _generation in rows:
            data = self._crops.read(sha)
            if data is None:
                failed[label] = (item_id, f"crop {sha} is missing or damaged")
                continue
            labels[item_id] = label
            crops.append(data)
        embeddings, failures = embed_checked(embed, list(labels), crops, dim=dim) if crops else ({}, {})
        failed.update({labels[item_id]: (item_id, message) for item_id, message in failures.items()})
        with self._write_mutex:
            self._check_writable()
            with write_transaction(self._writer()) as connection:
                connection.executemany(
                    f"INSERT OR REPLACE INTO {EMBEDDINGS_NEXT} (label, vector) VALUES (?, ?)",
                    [(labels[item_id], vector_to_blob(vector)) for item_id, vector in embeddings.items()],
                )
        return failed

    def _reindex_catch_up(
        self: FaissGalleryStore,
        embed: EmbedCrops,
        *,
        dim: int,
        batch_size: int,
        failed: dict[int, tuple[str, str]],
    ) -> dict[int, tuple[str, str]]:
        """Embed the items written while the reindex ran: live labels that have no next embedding yet."""
        rows = (
            self._db.reader()
            .execute(
                f"SELECT id, label, sha256, generation FROM items WHERE label NOT IN (SELECT label FROM {EMBEDDINGS_NEXT}) "
                "ORDER BY id"
            )
            .fetchall()
        )
        pending = [row for row in rows if row[1] not in failed]
        if pending:
            logger.info("reindex: embedding %d items written while it ran", len(pending))
        caught_up: dict[int, tuple[str, str]] = {}
        for start in range(0, len(pending), batch_size):
            caught_up.update(self._reindex_rows(embed, pending[start : start + batch_size], dim=dim))
        return caught_up

    def _swap_reindexed(
        self: FaissGalleryStore,
        info: SpecInfo,
        *,
        model_identity: str,
        dim: int,
        failed: dict[int, tuple[str, str]],
    ) -> ReindexReport:
        """Swap in the next embeddings, model identity and dimension in one transaction, then the FAISS index.

        Items whose crops failed to embed are deleted, since they have no embedding of the new model.
        The caller holds the write mutex.
        """
        connection = self._writer()
        live = set(self._db.labels_matching(None).tolist())
        failed = {label: entry for label, entry in failed.items() if label in live}
        if live and len(failed) == len(live):
            item_id, message = next(iter(failed.values()))
            raise GalleryError(
                f"reindex failed for all {len(live)} items (first: {item_id!r}: {message}); the gallery keeps "
                f"model {self._model_identity} ({self._dim}-d). Check the embed function"
            )
        connection.execute(f"DELETE FROM {EMBEDDINGS_NEXT} WHERE label NOT IN (SELECT label FROM items)")
        rebuilt = build_index(self._db, info, dim, table=EMBEDDINGS_NEXT)
        failed_digests = [
            row[1]
            for row in gallery_db.existing_rows(
                connection, [item_id for item_id, _ in failed.values()]
            ).values()
        ]
        with write_transaction(connection):
            if failed:
                gallery_db.delete_labels(connection, list(failed))
            connection.execute("DROP TABLE embeddings")
            connection.execute(f"ALTER TABLE {EMBEDDINGS_NEXT} RENAME TO embeddings")
            embedding_version = gallery_db.read_meta_int(connection, "embedding_version") + 1
            for key, value in (
                ("model_identity", model_identity),
                ("dim", str(dim)),
                ("embedding_version", str(embedding_version)),
            ):
                gallery_db.set_meta(connection, key, value)
            connection.execute("DELETE FROM meta WHERE key = 'reindex_target'")
            generation = gallery_db.bump_generation(connection, -len(failed))
            with self._index_lock.write():
                connection.execute("COMMIT")
                self._faiss, self._info = rebuilt, info
                self._model_identity, self._dim = model_identity, dim
                self._embedding_version, self._generation = embedding_version, generation
        failures = {item_id: message for item_id, message in failed.values()}
        if failures:
            logger.warning(
                "reindex removed %d items whose crops could not be embedded: %s",
                len(failures),
                ", ".join(repr(item_id) for item_id in list(failures)[:20]),
            )
        self._remove_unreferenced_crops(failed_digests)
        self._save_index()
        self._write_manifest(closed_cleanly=False)
        connection.execute("PRAGMA incremental_vacuum")
        self._warned_untrained = False
        self._warn_if_untrained()
        return ReindexReport(
            rewritten=self._faiss.live_count, failed=failures, model_identity=model_identity, dim=dim
        )


def _start_reindex(connection: sqlite3.Connection, *, model_identity: str, dim: int) -> None:
    with write_transaction(connection):
        connection.execute(f"DROP TABLE IF EXISTS {EMBEDDINGS_NEXT}")
        connection.execute(
            f"CREATE TABLE {EMBEDDINGS_NEXT} (label INTEGER PRIMARY KEY, vector BLOB NOT NULL)"
        )
        target = json.dumps({"model_identity": model_identity, "dim": dim})
        gallery_db.set_meta(connection, "reindex_target", target)
