"""Checks and repairs run when a FAISS gallery directory is opened.

`OpenReport` records what was found. After a writer that did not close cleanly, the repairs delete
temporary files and orphan crops, verify SQLite and list items whose crop file is missing. On every
open, `index.faiss` is loaded, or rebuilt or brought up to date from SQLite when it is missing,
damaged or stale.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from index.faiss_index import EXACT_SPEC, FaissIndex, IndexFileError, SpecInfo
from index.files import CropStore, remove_temp_files
from index.gallery_db import GalleryDatabase
from index.manifest import IndexFileRecord
from index.store import StoreCorruptError

logger = logging.getLogger(__name__)

INDEX_NAME = "index.faiss"
# Ids of items with missing crops named in a report; the rest are counted.
_MAX_IDS_IN_REPORT = 20

IndexSource = Literal["new", "file", "caught_up", "rebuilt"]


@dataclass(frozen=True)
class OpenReport:
    """What opening a data directory found: whether the last writer closed cleanly and what was repaired.

    `index_source` is how the FAISS index was obtained: "new" (empty gallery), "file" (index.faiss as
    saved), "caught_up" (index.faiss plus the writes made after it was saved) or "rebuilt" (from SQLite).
    `repairs` contains one sentence per repair, also logged as a WARNING. A read-only store repairs only
    in memory and leaves the files as they are.
    """

    created: bool
    read_only: bool
    previous_close_clean: bool
    index_source: IndexSource
    repairs: tuple[str, ...]
    missing_crop_ids: tuple[str, ...] = ()

    @property
    def repaired(self) -> bool:
        return bool(self.repairs)

    def summary(self) -> str:
        if self.created:
            return "created a new gallery"
        state = "closed cleanly" if self.previous_close_clean else "did not close cleanly"
        repairs = "; ".join(self.repairs) if self.repairs else "nothing to repair"
        return f"the last writer {state}; {repairs}"


def repair_files(directory: Path, db: GalleryDatabase, crops: CropStore) -> tuple[list[str], tuple[str, ...]]:
    """Repair what an interrupted writer can leave behind; return (repair sentences, ids with missing crops).

    Raises `StoreCorruptError` when SQLite's quick_check fails, since embeddings are then untrustworthy.
    """
    repairs: list[str] = []
    removed = remove_temp_files(directory)
    if removed:
        repairs.append(f"removed {removed} temporary files of interrupted writes")
    check = db.reader().execute("PRAGMA quick_check").fetchall()
    if check != [("ok",)]:
        raise StoreCorruptError(
            f"gallery.sqlite3 in {directory} failed SQLite's quick_check: {check[:3]}. Restore it from a backup"
        )
    referenced = {row[0] for row in db.reader().execute("SELECT DISTINCT sha256 FROM items")}
    on_disk = set(crops.iter_digests())
    orphans = on_disk - referenced
    if orphans:
        crops.remove(orphans)
        repairs.append(f"removed {len(orphans)} crop files that no item references")
    missing_ids: tuple[str, ...] = ()
    missing = referenced - on_disk
    if missing:
        rows = (
            db.reader()
            .execute(
                "SELECT id FROM items WHERE sha256 IN (SELECT value FROM json_each(?)) ORDER BY id",
                (json.dumps(sorted(missing)),),
            )
            .fetchall()
        )
        missing_ids = tuple(row[0] for row in rows)
        listed_ids = ", ".join(repr(item_id) for item_id in missing_ids[:_MAX_IDS_IN_REPORT])
        logger.error(
            "%d items reference crop files missing from %s: %s", len(missing_ids), crops.root, listed_ids
        )
        repairs.append(
            f"{len(missing_ids)} items reference crop files missing from crops/ (their embeddings stay "
            f"searchable, read_crop fails; re-ingest them): {listed_ids}"
        )
    return repairs, missing_ids


def load_index(
    directory: Path,
    *,
    db: GalleryDatabase,
    info: SpecInfo,
    dim: int,
    generation: int,
    embedding_version: int,
    record: IndexFileRecord | None,
    record_problem: str | None,
) -> tuple[FaissIndex, IndexSource, str | None]:
    """Return the FAISS index for the gallery as stored in SQLite, how it was obtained and a repair note.

    index.faiss is used when the manifest records it for the same embeddings and a compatible spec, and
    when its size and sha256 match the record. Writes made after it was saved are then applied from
    SQLite. Otherwise the index is rebuilt from SQLite.
    """
    count = db.count(None)
    reason = _unusable_reason(info, dim, embedding_version, record, record_problem)
    if reason is None:
        assert record is not None
        try:
            loaded = FaissIndex.load(
                directory / INDEX_NAME,
                info,
                dim,
                built_spec=record.built_spec,
                ntotal=record.ntotal,
                size_bytes=record.size_bytes,
                sha256=record.sha256,
            )
        except IndexFileError as e:
            reason = str(e)
        else:
            return _catch_up(loaded, db=db, dim=dim, record=record, generation=generation)
    if record is None and record_problem is None and count == 0:
        return build_index(db, info, dim), "new", None
    started = time.perf_counter()
    rebuilt = build_index(db, info, dim)
    note = (
        f"{reason}; rebuilt the {rebuilt.built_spec} index from gallery.sqlite3 "
        f"({rebuilt.ntotal} embeddings, {time.perf_counter() - started:.1f} s)"
    )
    return rebuilt, "rebuilt", note


def _unusable_reason(
    info: SpecInfo,
    dim: int,
    embedding_version: int,
    record: IndexFileRecord | None,
    record_problem: str | None,
) -> str | None:
    if record_problem is not None:
        return record_problem
    if record is None:
        return "manifest.json records no index.faiss"
    if record.dim != dim or record.embedding_version != embedding_version:
        return (
            f"index.faiss contains {record.dim}-d embeddings of model {record.model_identity} (version "
            f"{record.embedding_version}), not the gallery's current embeddings"
        )
    compatible = record.built_spec == info.spec or (
        record.built_spec == EXACT_SPEC and info.training_threshold
    )
    if not compatible:
        return f"index.faiss was built as {record.built_spec!r}; the gallery is opened with {info.spec!r}"
    return None


def _catch_up(
    loaded: FaissIndex, *, db: GalleryDatabase, dim: int, record: IndexFileRecord, generation: int
) -> tuple[FaissIndex, IndexSource, str | None]:
    # Exact and HNSW files keep deleted vectors as tombstones, which only the label comparison finds again.
    has_tombstones = loaded.uses_tombstones and record.ntotal != record.live_count
    if record.generation == generation and not has_tombstones:
        return loaded, "file", None
    live = db.live_labels()
    added, removed = loaded.sync_labels(live, lambda labels: db.vectors_for_labels(labels, dim))
    removed -= record.ntotal - record.live_count  # tombstones the file had when it was saved
    if record.generation == generation and not added and not removed:
        return loaded, "file", None
    note = (
        f"index.faiss was saved at write generation {record.generation} and gallery.sqlite3 is at "
        f"{generation}; applied the later writes from gallery.sqlite3 ({added} added, {removed} removed)"
    )
    return loaded, "caught_up", note


def build_index(db: GalleryDatabase, info: SpecInfo, dim: int, *, table: str = "embeddings") -> FaissIndex:
    """Build the FAISS index from the embeddings in SQLite (training it when the spec needs and allows)."""
    count = db.reader().execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
    return FaissIndex.build(
        info,
        dim,
        count=count,
        chunks=lambda: db.iter_vectors(dim, table=table, chunk_rows=65_536),
        train_sample=_sampler(db, dim, table),
    )


def _sampler(db: GalleryDatabase, dim: int, table: str) -> Callable[[int], np.ndarray]:
    def sample(size: int) -> np.ndarray:
        labels = np.fromiter(
            (row[0] for row in db.reader().execute(f"SELECT label FROM {table}")), dtype=np.int64
        )
        chosen = np.sort(np.random.default_rng(0).choice(labels, size=min(size, labels.size), replace=False))
        return db.vectors_for_labels(chosen, dim, table=table)

    return sample
