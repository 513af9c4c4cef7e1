"""Opening a FAISS gallery directory: create or check the database, check the model, repair, load FAISS.

`open_directory` runs the steps in order and returns what the store needs. The caller holds the
writer lock, or opens read-only, in which case nothing on disk is changed.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from index.faiss_index import FaissIndex, SpecInfo
from index.faiss_recovery import OpenReport, load_index, repair_files
from index.files import CropStore
from index.gallery_db import DB_NAME, EMBEDDINGS_NEXT, GalleryDatabase, write_transaction
from index.manifest import (
    MANIFEST_NAME,
    IndexFileRecord,
    ManifestRecord,
    ManifestUnreadableError,
    read_manifest,
)
from index.store import SCHEMA_VERSION, ModelMismatchError, StoreCorruptError, StoreNotFoundError

CROPS_DIR = "crops"


@dataclass(frozen=True)
class OpenedDirectory:
    """A checked data directory: its database, meta values, FAISS index, index file record and report."""

    db: GalleryDatabase
    meta: dict[str, str]
    faiss_index: FaissIndex
    index_record: IndexFileRecord | None
    report: OpenReport


def open_directory(
    directory: Path, *, read_only: bool, create: bool, model_identity: str, dim: int, info: SpecInfo
) -> OpenedDirectory:
    """Open the database in `directory` (creating it when allowed), check it and load the FAISS index.

    Raises `ModelMismatchError`, `StoreNotFoundError` or `StoreCorruptError` as `FaissGalleryStore.open`
    documents.
    """
    manifest, manifest_problem = _read_manifest_safely(directory / MANIFEST_NAME)
    created = _must_create_database(directory, manifest, manifest_problem, create=create, read_only=read_only)
    try:
        db = GalleryDatabase(directory / DB_NAME, read_only=read_only)
    except sqlite3.DatabaseError as e:
        raise StoreCorruptError(f"{directory / DB_NAME} cannot be read: {e}; restore it from a backup") from e
    try:
        if created:
            db.create_schema(_initial_meta(model_identity, dim))
        meta = _read_meta(directory, db)
        check_schema_and_identity(directory, meta, model_identity=model_identity, dim=dim)
        repairs: list[str] = []
        if manifest_problem is not None:
            repairs.append(f"{manifest_problem}; rewrote it from gallery.sqlite3")
        # A read-only store cannot tell a crashed reindex from one that the writer is running.
        unfinished = None if read_only else _unfinished_reindex_note(db, meta)
        if unfinished is not None:
            repairs.append(unfinished)
            discard_unfinished_reindex(db)
        previous_clean = created or (manifest is not None and manifest.closed_cleanly)
        missing_crop_ids: tuple[str, ...] = ()
        if not read_only and not previous_clean:
            file_repairs, missing_crop_ids = repair_files(directory, db, CropStore(directory / CROPS_DIR))
            repairs.extend(file_repairs)
        record = manifest.index_file if manifest is not None else None
        faiss_index, source, note = load_index(
            directory,
            db=db,
            info=info,
            dim=dim,
            generation=int(meta["generation"]),
            embedding_version=int(meta["embedding_version"]),
            record=record,
            record_problem=manifest_problem,
        )
    except BaseException:
        db.close()
        raise
    if note is not None:
        repairs.append(note if not read_only else f"{note} (in memory only: the store is read-only)")
    report = OpenReport(
        created=created,
        read_only=read_only,
        previous_close_clean=previous_clean,
        index_source=source,
        repairs=tuple(repairs),
        missing_crop_ids=missing_crop_ids,
    )
    return OpenedDirectory(db=db, meta=meta, faiss_index=faiss_index, index_record=record, report=report)


def check_schema_and_identity(
    directory: Path, meta: dict[str, str], *, model_identity: str, dim: int
) -> None:
    """Raise unless the database has this code's schema and was built for `model_identity` and `dim`."""
    stored_version = int(meta["schema_version"])
    if stored_version != SCHEMA_VERSION:
        raise StoreCorruptError(
            f"{directory} has gallery schema version {stored_version}; this code reads version "
            f"{SCHEMA_VERSION}. Open it with the matching release of axm-search"
        )
    stored_identity, stored_dim = meta["model_identity"], int(meta["dim"])
    if stored_identity != model_identity or stored_dim != dim:
        raise ModelMismatchError(
            f"gallery {directory} was built with model {stored_identity} ({stored_dim}-d); the loaded model "
            f"is {model_identity} ({dim}-d). Re-embed the stored crops with `axm reindex --checkpoint NEW`, "
            "or open another data directory"
        )


def discard_unfinished_reindex(db: GalleryDatabase) -> None:
    """Drop the next embeddings table and the reindex target of a reindex that did not finish."""
    assert db.writer is not None
    with write_transaction(db.writer) as connection:
        connection.execute(f"DROP TABLE IF EXISTS {EMBEDDINGS_NEXT}")
        connection.execute("DELETE FROM meta WHERE key = 'reindex_target'")


def _read_manifest_safely(path: Path) -> tuple[ManifestRecord | None, str | None]:
    try:
        return read_manifest(path), None
    except ManifestUnreadableError as e:
        return None, f"manifest.json is damaged ({e})"


def _must_create_database(
    directory: Path,
    manifest: ManifestRecord | None,
    manifest_problem: str | None,
    *,
    create: bool,
    read_only: bool,
) -> bool:
    """Return whether a new database must be created; raise when the gallery cannot be opened."""
    if (directory / DB_NAME).exists():
        return False
    crops = directory / CROPS_DIR
    if manifest is not None or manifest_problem is not None or (crops.is_dir() and any(crops.iterdir())):
        raise StoreCorruptError(
            f"{directory} contains a gallery (manifest.json or crops/) but {DB_NAME} is missing; embeddings "
            "and metadata cannot be recovered from index.faiss. Restore gallery.sqlite3 from a backup, or "
            "move the directory away to start a new gallery"
        )
    if read_only or not create:
        raise StoreNotFoundError(f"no gallery at {directory}; ingest crops to create one there")
    return True


def _read_meta(directory: Path, db: GalleryDatabase) -> dict[str, str]:
    try:
        if not db.has_schema():
            raise StoreCorruptError(f"{directory / DB_NAME} has no gallery tables; restore it from a backup")
        return db.meta()
    except sqlite3.DatabaseError as e:
        raise StoreCorruptError(f"{directory / DB_NAME} cannot be read: {e}; restore it from a backup") from e


def _initial_meta(model_identity: str, dim: int) -> dict[str, str]:
    return {
        "model_identity": model_identity,
        "dim": str(dim),
        "schema_version": str(SCHEMA_VERSION),
        "generation": "0",
        "count": "0",
        "embedding_version": "1",
        "cursor_secret": secrets.token_hex(32),
        "created_at": datetime.now(UTC).isoformat(),
    }


def _unfinished_reindex_note(db: GalleryDatabase, meta: dict[str, str]) -> str | None:
    if "reindex_target" not in meta and not db.table_exists(EMBEDDINGS_NEXT):
        return None
    target = json.loads(meta.get("reindex_target", "{}"))
    return (
        f"discarded an unfinished reindex to model {target.get('model_identity', 'unknown')} "
        f"({target.get('dim', '?')}-d); the gallery keeps model {meta['model_identity']} ({meta['dim']}-d)"
    )
