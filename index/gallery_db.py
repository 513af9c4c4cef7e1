"""The SQLite database of a FAISS gallery: items, metadata and embeddings, the source of truth.

Tables:

- `meta(key, value)`: model identity, dimension, schema version, write generation, item count, and
  the secret that signs listing cursors.
- `items`: one row per external id. `label` is the int64 FAISS id, allocated by AUTOINCREMENT so a
  label is never reused; replacing an item gives it a new label. Times are integer microseconds since
  the epoch (UTC); `generation` is the write generation that last wrote the row.
- `embeddings(label, vector)`: float32 little-endian blobs. During a reindex, `embeddings_next` stores
  the new model's embeddings until the swap.

The database runs in WAL mode with `synchronous=FULL`, so a committed transaction survives a crash.
One connection writes (callers serialise writes); every thread reads through its own connection.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from urllib.parse import quote

import numpy as np

from index.store import GalleryItem, SearchFilters
from index.validation import decode_extra, from_epoch_us, to_epoch_us

DB_NAME = "gallery.sqlite3"
EMBEDDINGS = "embeddings"
EMBEDDINGS_NEXT = "embeddings_next"
_CHUNK_ROWS = 16_384
PAGE_SIZE = 16_384

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS items (
    label INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    camera_id TEXT,
    captured_at_us INTEGER,
    source TEXT,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    extra TEXT NOT NULL,
    created_at_us INTEGER NOT NULL,
    updated_at_us INTEGER NOT NULL,
    generation INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS items_camera ON items (camera_id, captured_at_us);
CREATE INDEX IF NOT EXISTS items_captured ON items (captured_at_us);
CREATE INDEX IF NOT EXISTS items_sha256 ON items (sha256);
CREATE TABLE IF NOT EXISTS embeddings (label INTEGER PRIMARY KEY, vector BLOB NOT NULL);
"""

_ITEM_COLUMNS = (
    "label, id, camera_id, captured_at_us, source, width, height, sha256, extra, created_at_us, updated_at_us"
)


def filter_sql(filters: SearchFilters | None) -> tuple[str, list[object]]:
    """Return a WHERE condition over `items` (or "1" for no filter) and its parameters."""
    if filters is None:
        return "1", []
    clauses: list[str] = []
    params: list[object] = []
    if filters.camera_ids is not None:
        clauses.append("items.camera_id IN (SELECT value FROM json_each(?))")
        params.append(json.dumps(sorted(filters.camera_ids)))
    if filters.captured_from is not None:
        clauses.append("items.captured_at_us >= ?")
        params.append(to_epoch_us(filters.captured_from, field_name="captured_from"))
    if filters.captured_to is not None:
        clauses.append("items.captured_at_us <= ?")
        params.append(to_epoch_us(filters.captured_to, field_name="captured_to"))
    return (" AND ".join(clauses) or "1"), params


def item_from_row(row: Sequence[object]) -> GalleryItem:
    """Convert a row of `_ITEM_COLUMNS` (label first) to a `GalleryItem`."""
    _label, item_id, camera_id, captured, source, width, height, sha, extra, created, updated = row
    return GalleryItem(
        id=item_id,
        camera_id=camera_id,
        captured_at=from_epoch_us(captured),
        source=source,
        width=width,
        height=height,
        sha256=sha,
        extra=decode_extra(extra),
        created_at=from_epoch_us(created),
        updated_at=from_epoch_us(updated),
    )


def vectors_from_blobs(blobs: Sequence[bytes], dim: int) -> np.ndarray:
    """Stack float32 little-endian blobs into an (N, dim) float32 array."""
    if not blobs:
        return np.empty((0, dim), dtype=np.float32)
    return np.frombuffer(b"".join(blobs), dtype="<f4").reshape(len(blobs), dim).astype(np.float32)


def vector_to_blob(vector: np.ndarray) -> bytes:
    return np.ascontiguousarray(vector, dtype="<f4").tobytes()


class GalleryDatabase:
    """Connections to `gallery.sqlite3` and the queries the FAISS store runs on it."""

    def __init__(self, path: Path, *, read_only: bool) -> None:
        self.path = path
        self.read_only = read_only
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        self.writer: sqlite3.Connection | None = None if read_only else self._connect(writer=True)

    def _connect(self, *, writer: bool) -> sqlite3.Connection:
        mode = "rwc" if writer else "ro"
        connection = sqlite3.connect(
            f"file:{quote(str(self.path))}?mode={mode}",
            uri=True,
            isolation_level=None,
            check_same_thread=False,
            timeout=30.0,
        )
        try:
            if writer:
                # These two take effect only on a new database. With 4 KiB pages a 512-d embedding row
                # (2 KiB) fills half a page; 16 KiB pages hold seven. Incremental auto-vacuum lets a
                # reindex return the pages of the old embeddings table.
                connection.execute(f"PRAGMA page_size = {PAGE_SIZE}")
                connection.execute("PRAGMA auto_vacuum = INCREMENTAL")
                connection.execute("PRAGMA journal_mode = WAL")
                connection.execute("PRAGMA synchronous = FULL")
            else:
                # Readers run no pragma that may write. A reader is opened lazily inside a search, which
                # holds the index lock that a committing writer waits for. Waiting here for that
                # writer's SQLite lock would deadlock until the busy timeout.
                connection.execute("PRAGMA query_only = ON")
        except BaseException:
            connection.close()
            raise
        with self._connections_lock:
            self._connections.append(connection)
        return connection

    def reader(self) -> sqlite3.Connection:
        """Return this thread's read connection, opening it on first use."""
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = self._connect(writer=False)
            self._local.connection = connection
        return connection

    def close(self) -> None:
        with self._connections_lock:
            connections, self._connections = self._connections, []
        for connection in connections:
            connection.close()
        self.writer = None

    # Schema and meta ------------------------------------------------------------------------------

    def create_schema(self, meta: dict[str, str]) -> None:
        assert self.writer is not None
        self.writer.execute("BEGIN IMMEDIATE")
        try:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    self.writer.execute(statement)
            for key, value in meta.items():
                set_meta(self.writer, key, value)
            self.writer.execute("COMMIT")
        except BaseException:
            if self.writer.in_transaction:
                self.writer.execute("ROLLBACK")
            raise

    def has_schema(self) -> bool:
        row = (
            self.reader()
            .execute(
                "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name IN ('meta', 'items', 'embeddings')"
            )
            .fetchone()
        )
        return row[0] == 3

    def meta(self) -> dict[str, str]:
        return dict(self.reader().execute("SELECT key, value FROM meta").fetchall())

    def table_exists(self, name: str) -> bool:
        row = (
            self.reader()
            .execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,))
            .fetchone()
        )
        return row is not None

    # Reads ------------------------------------------------------------------------------------------

    def get_item(self, item_id: str) -> GalleryItem | None:
        row = self.reader().execute(f"SELECT {_ITEM_COLUMNS} FROM items WHERE id = ?", (item_id,)).fetchone()
        return item_from_row(row) if row else None

    def get_sha256(self, item_id: str) -> str | None:
        row = self.reader().execute("SELECT sha256 FROM items WHERE id = ?", (item_id,)).fetchone()
        return row[0] if row else None

    def get_vector(self, item_id: str, dim: int) -> np.ndarray | None:
        row = (
            self.reader()
            .execute(
                "SELECT e.vector FROM items JOIN embeddings AS e ON e.label = items.label WHERE items.id = ?",
                (item_id,),
            )
            .fetchone()
        )
        return vectors_from_blobs([row[0]], dim)[0] if row else None

    def items_by_label(self, labels: Sequence[int]) -> dict[int, GalleryItem]:
        rows = (
            self.reader()
            .execute(
                f"SELECT {_ITEM_COLUMNS} FROM items WHERE label IN (SELECT value FROM json_each(?))",
                (json.dumps([int(label) for label in labels]),),
            )
            .fetchall()
        )
        return {row[0]: item_from_row(row) for row in rows}

    def count(self, filters: SearchFilters | None) -> int:
        if filters is None:
            row = self.reader().execute("SELECT value FROM meta WHERE key = 'count'").fetchone()
            return int(row[0])
        condition, params = filter_sql(filters)
        return self.reader().execute(f"SELECT COUNT(*) FROM items WHERE {condition}", params).fetchone()[0]

    def camera_ids(self) -> list[str]:
        rows = (
            self.reader()
            .execute("SELECT DISTINCT camera_id FROM items WHERE camera_id IS NOT NULL ORDER BY camera_id")
            .fetchall()
        )
        return [row[0] for row in rows]

    def list_after(
        self, after_id: str | None, limit: int, filters: SearchFilters | None
    ) -> list[GalleryItem]:
        condition, params = filter_sql(filters)
        if after_id is not None:
            condition += " AND items.id > ?"
            params.append(after_id)
        rows = (
            self.reader()
            .execute(
                f"SELECT {_ITEM_COLUMNS} FROM items WHERE {condition} ORDER BY items.id LIMIT ?",
                [*params, limit],
            )
            .fetchall()
        )
        return [item_from_row(row) for row in rows]

    def crops_after(self, after_id: str | None, limit: int) -> list[tuple[str, int, str, int]]:
        """Return (id, label, sha256, generation) rows after `after_id` in id order."""
        return (
            self.reader()
            .execute(
                "SELECT id, label, sha256, generation FROM items WHERE id > ? ORDER BY id LIMIT ?",
                (after_id if after_id is not None else "", limit),
            )
            .fetchall()
        )

    def labels_matching(self, filters: SearchFilters | None) -> np.ndarray:
        condition, params = filter_sql(filters)
        rows = self.reader().execute(f"SELECT label FROM items WHERE {condition}", params).fetchall()
        return np.fromiter((row[0] for row in rows), dtype=np.int64, count=len(rows))

    def live_labels(self) -> np.ndarray:
        return self.labels_matching(None)

    def iter_vectors(
        self,
        dim: int,
        *,
        filters: SearchFilters | None = None,
        table: str = EMBEDDINGS,
        chunk_rows: int = _CHUNK_ROWS,
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield (labels, embeddings) chunks of the items matching `filters`, in label order.

        Each chunk is its own query (keyset pagination on label), so no read transaction stays open
        between chunks.
        """
        condition, params = filter_sql(filters)
        after = -1
        while True:
            rows = (
                self.reader()
                .execute(
                    f"SELECT e.label, e.vector FROM {table} AS e JOIN items ON items.label = e.label "
                    f"WHERE e.label > ? AND {condition} ORDER BY e.label LIMIT ?",
                    [after, *params, chunk_rows],
                )
                .fetchall()
            )
            if not rows:
                return
            labels = np.fromiter((row[0] for row in rows), dtype=np.int64, count=len(rows))
            yield labels, vectors_from_blobs([row[1] for row in rows], dim)
            after = int(labels[-1])

    def vectors_for_labels(self, labels: np.ndarray, dim: int, *, table: str = EMBEDDINGS) -> np.ndarray:
        """Return the embeddings of `labels` in the same order; every label must exist."""
        found: dict[int, bytes] = {}
        for start in range(0, labels.size, _CHUNK_ROWS):
            chunk = [int(label) for label in labels[start : start + _CHUNK_ROWS]]
            found.update(
                self.reader()
                .execute(
                    f"SELECT label, vector FROM {table} WHERE label IN (SELECT value FROM json_each(?))",
                    (json.dumps(chunk),),
                )
                .fetchall()
            )
        return vectors_from_blobs([found[int(label)] for label in labels], dim)


def set_meta(connection: sqlite3.Connection, key: str, value: str) -> None:
    connection.execute(
        "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (key, value),
    )


def read_meta_int(connection: sqlite3.Connection, key: str) -> int:
    return int(connection.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()[0])


def existing_rows(connection: sqlite3.Connection, ids: Sequence[str]) -> dict[str, tuple[int, str, int]]:
    """Return id -> (label, sha256, created_at_us) for the ids that exist."""
    rows = connection.execute(
        "SELECT id, label, sha256, created_at_us FROM items WHERE id IN (SELECT value FROM json_each(?))",
        (json.dumps(list(ids)),),
    ).fetchall()
    return {row[0]: (row[1], row[2], row[3]) for row in rows}


def next_label(connection: sqlite3.Connection) -> int:
    """Return the first label never used; AUTOINCREMENT keeps the high-water mark in sqlite_sequence."""
    row = connection.execute("SELECT seq FROM sqlite_sequence WHERE name = 'items'").fetchone()
    return (row[0] if row else 0) + 1


def delete_labels(connection: sqlite3.Connection, labels: Sequence[int], *, table: str = EMBEDDINGS) -> None:
    encoded = json.dumps([int(label) for label in labels])
    connection.execute(f"DELETE FROM {table} WHERE label IN (SELECT value FROM json_each(?))", (encoded,))
    connection.execute("DELETE FROM items WHERE label IN (SELECT value FROM json_each(?))", (encoded,))


def unreferenced_digests(connection: sqlite3.Connection, digests: Sequence[str]) -> list[str]:
    """Return the crop digests that no item references any more."""
    return [
        sha
        for sha in sorted(set(digests))
        if connection.execute("SELECT 1 FROM items WHERE sha256 = ? LIMIT 1", (sha,)).fetchone() is None
    ]


def bump_generation(connection: sqlite3.Connection, count_delta: int) -> int:
    """Advance the write generation and the item count inside the open transaction; return the generation."""
    generation = read_meta_int(connection, "generation") + 1
    set_meta(connection, "generation", str(generation))
    set_meta(connection, "count", str(read_meta_int(connection, "count") + count_delta))
    return generation


@contextlib.contextmanager
def write_transaction(connection: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """Run the block in a BEGIN IMMEDIATE transaction and commit at its end, unless it committed already.

    Any exception rolls the transaction back. A block may commit itself, for example under a lock.
    """
    connection.execute("BEGIN IMMEDIATE")
    try:
        yield connection
    except BaseException:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise
    if connection.in_transaction:
        connection.execute("COMMIT")
