"""The `manifest.json` file of a FAISS gallery directory: what built the gallery and its index file.

SQLite stores the same model identity and dimension and is the source of truth. The manifest is a
readable summary for operators and the record of the saved `index.faiss` (its generation, size and
sha256), so a stale or damaged index file is detected on open.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from index.files import write_bytes_durably

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "axm-gallery"


class ManifestUnreadableError(Exception):
    """Raised when `manifest.json` exists but is not valid JSON of the expected shape."""


@dataclass(frozen=True)
class IndexFileRecord:
    """The saved `index.faiss`: the gallery generation and embeddings it reflects, and its checksum.

    `embedding_version` counts the reindexes of the gallery, so a file saved before a reindex to the
    same model identity and dimension is still recognised as stale.
    `built_spec` is the spec of the structure in the file. It differs from the configured spec while
    an IVF index waits for enough embeddings to train, and the file then contains an exact index.
    `ntotal` counts every vector in the file, including deleted ones that HNSW keeps as tombstones;
    `live_count` excludes them.
    """

    generation: int
    model_identity: str
    dim: int
    embedding_version: int
    built_spec: str
    ntotal: int
    live_count: int
    size_bytes: int
    sha256: str


@dataclass(frozen=True)
class ManifestRecord:
    """Contents of `manifest.json`. `count` and `generation` are as of the last manifest write."""

    model_identity: str
    dim: int
    schema_version: int
    backend: str
    backend_version: str
    count: int
    index_spec: str
    generation: int
    closed_cleanly: bool
    index_file: IndexFileRecord | None
    updated_at: str


def read_manifest(path: Path) -> ManifestRecord | None:
    """Return the manifest, None when the file is absent; raise `ManifestUnreadableError` when damaged."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        data = json.loads(text)
        if data.get("format") != MANIFEST_FORMAT:
            raise ManifestUnreadableError(f"format is {data.get('format')!r}, expected {MANIFEST_FORMAT!r}")
        index_file = data.get("index_file")
        return ManifestRecord(
            model_identity=str(data["model_identity"]),
            dim=int(data["dim"]),
            schema_version=int(data["schema_version"]),
            backend=str(data["backend"]),
            backend_version=str(data["backend_version"]),
            count=int(data["count"]),
            index_spec=str(data["index_spec"]),
            generation=int(data["generation"]),
            closed_cleanly=bool(data["closed_cleanly"]),
            index_file=_index_record_from_json(index_file) if index_file is not None else None,
            updated_at=str(data["updated_at"]),
        )
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ManifestUnreadableError(f"{path} is not a valid manifest: {e}") from e


def _index_record_from_json(data: dict[str, Any]) -> IndexFileRecord:
    return IndexFileRecord(
        generation=int(data["generation"]),
        model_identity=str(data["model_identity"]),
        dim=int(data["dim"]),
        embedding_version=int(data["embedding_version"]),
        built_spec=str(data["built_spec"]),
        ntotal=int(data["ntotal"]),
        live_count=int(data["live_count"]),
        size_bytes=int(data["size_bytes"]),
        sha256=str(data["sha256"]),
    )


def write_manifest(path: Path, record: ManifestRecord) -> None:
    """Write the manifest atomically and durably."""
    data = {"format": MANIFEST_FORMAT, **dataclasses.asdict(record)}
    text = json.dumps(data, indent=2, sort_keys=True) + "\n"
    write_bytes_durably(path, text.encode("utf-8"))
