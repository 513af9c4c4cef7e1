"""Bulk ingest and reindex, shared by `POST /gallery` and the `axm ingest` / `axm reindex` commands.

Ingest takes encoded image bytes with their metadata and, per batch: checks the file size and the
id, decodes through `model.preprocess` (the only decoder), embeds with the engine's encoder and
upserts into the gallery. A file rejected by these checks, by the decoder or by the gallery's item
validation gets its own outcome, and the other files go on. A failure of the model or of the whole
gallery fails the call. Without an id, an item is named by the sha256 of its bytes, so uploading the same bytes again
updates the item instead of adding a copy.
"""

from __future__ import annotations

import csv
import hashlib
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from index.store import GalleryStore, InvalidItemError, NewItem, ReindexReport
from model.preprocess import DecodedImage, DecodeLimits, ImageError, decode_image
from service.engine import SearchEngine
from service.errors import ErrorInfo, InvalidRequestError, ServiceError, UnreadableFileError, describe
from service.limits import check_file_size, check_item_id

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"})
# Errors that reject one item and leave the rest of the request to go on.
ITEM_ERRORS = (ImageError, ServiceError, InvalidItemError)


@dataclass(frozen=True)
class IngestItem:
    """One image to ingest: its bytes and the metadata to store with it. `captured_at` is timezone-aware."""

    data: bytes
    filename: str | None = None
    id: str | None = None
    camera_id: str | None = None
    captured_at: datetime | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class IngestOutcome:
    """Outcome of one item; `index` is its position in the request."""

    index: int
    filename: str | None
    id: str | None
    status: Literal["created", "updated", "rejected"]
    error: ErrorInfo | None = None


@dataclass(frozen=True)
class _Accepted:
    index: int
    item: IngestItem
    id: str


def content_id(data: bytes) -> str:
    """Return the id of an item uploaded without one: the hex sha256 of its bytes."""
    return hashlib.sha256(data).hexdigest()


def rejected_outcome(index: int, item: IngestItem, item_id: str | None, exc: BaseException) -> IngestOutcome:
    """Return the outcome of an item rejected by `exc`, and log it with its id."""
    info = describe(exc)
    logger.info("item %d (%s, id %s) rejected: %s", index, item.filename, item_id, info.code)
    return IngestOutcome(index, item.filename, item_id, "rejected", info)


def _check_item(index: int, item: IngestItem, *, max_file_bytes: int) -> _Accepted:
    check_file_size(len(item.data), max_bytes=max_file_bytes, filename=item.filename)
    item_id = check_item_id(item.id) if item.id is not None else content_id(item.data)
    return _Accepted(index, item, item_id)


def _batches_without_repeats(accepted: Sequence[_Accepted], batch_size: int) -> Iterator[list[_Accepted]]:
    """Yield batches in order in which no id repeats, so a repeated id overwrites in request order."""
    batch: list[_Accepted] = []
    ids: set[str] = set()
    for entry in accepted:
        if len(batch) == batch_size or entry.id in ids:
            yield batch
            batch, ids = [], set()
        batch.append(entry)
        ids.add(entry.id)
    if batch:
        yield batch


def _new_item(entry: _Accepted, decoded: DecodedImage, embedding: Any) -> NewItem:
    return NewItem(
        id=entry.id,
        embedding=embedding,
        crop=entry.item.data,
        width=decoded.width,
        height=decoded.height,
        camera_id=entry.item.camera_id,
        captured_at=entry.item.captured_at,
        source=entry.item.filename,
        extra=dict(entry.item.metadata),
    )


def _write(store: GalleryStore, entries: list[_Accepted], items: list[NewItem]) -> list[IngestOutcome]:
    """Upsert a batch; if the store rejects it as a whole, retry item by item to find the bad one."""
    try:
        results = store.upsert(items)
    except InvalidItemError:
        if len(items) == 1:
            raise
        outcomes = []
        for entry, item in zip(entries, items, strict=True):
            try:
                outcomes.extend(_write(store, [entry], [item]))
            except InvalidItemError as e:
                outcomes.append(rejected_outcome(entry.index, entry.item, entry.id, e))
        return outcomes
    return [
        IngestOutcome(entry.index, entry.item.filename, result.id, result.status)
        for entry, result in zip(entries, results, strict=True)
    ]


def _ingest_batch(engine: SearchEngine, batch: list[_Accepted], limits: DecodeLimits) -> list[IngestOutcome]:
    outcomes: list[IngestOutcome] = []
    decoded_entries: list[tuple[_Accepted, DecodedImage]] = []
    for entry in batch:
        try:
            decoded_entries.append((entry, decode_image(entry.item.data, limits)))
        except ImageError as e:
            outcomes.append(rejected_outcome(entry.index, entry.item, entry.id, e))
    if not decoded_entries:
        return outcomes

    embeddings = engine.encode_images([decoded.image for _, decoded in decoded_entries])
    entries = [entry for entry, _ in decoded_entries]
    items = [
        _new_item(entry, decoded, row)
        for (entry, decoded), row in zip(decoded_entries, embeddings, strict=True)
    ]
    outcomes.extend(_write(engine.store, entries, items))
    return outcomes


def ingest(
    engine: SearchEngine,
    items: Sequence[IngestItem],
    *,
    batch_size: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[IngestOutcome]:
    """Ingest items in batches; return one outcome per item, in input order.

    `progress(n)` is called after each batch with the number of items it settled.
    """
    settings = engine.settings
    batch_size = batch_size or settings.encode_batch_size
    outcomes: list[IngestOutcome] = []
    accepted: list[_Accepted] = []
    for index, item in enumerate(items):
        try:
            accepted.append(_check_item(index, item, max_file_bytes=settings.max_file_bytes))
        except ITEM_ERRORS as e:
            outcomes.append(rejected_outcome(index, item, item.id, e))
    if progress is not None and outcomes:
        progress(len(outcomes))

    for batch in _batches_without_repeats(accepted, batch_size):
        settled = _ingest_batch(engine, batch, engine.decode_limits)
        outcomes.extend(settled)
        if progress is not None:
            progress(len(settled))
    outcomes.sort(key=lambda outcome: outcome.index)
    logger.info(
        "ingested %d items: %d created, %d updated, %d rejected",
        len(outcomes),
        sum(o.status == "created" for o in outcomes),
        sum(o.status == "updated" for o in outcomes),
        sum(o.status == "rejected" for o in outcomes),
    )
    return outcomes


# --- bulk ingest from disk ---------------------------------------------------------------------


@dataclass(frozen=True)
class IngestSource:
    """A crop file on disk and the metadata to store with it; `id` None means the content hash."""

    path: Path
    id: str | None
    camera_id: str | None = None
    captured_at: datetime | None = None


def parse_captured_at(value: str, *, where: str) -> datetime:
    """Parse an ISO 8601 time that names its timezone (`2026-12-01T10:00:00Z`)."""
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError as e:
        raise InvalidRequestError(f"{where}: captured_at {value!r} is not an ISO 8601 time ({e})") from e
    if parsed.tzinfo is None:
        raise InvalidRequestError(
            f"{where}: captured_at {value!r} has no timezone; add one, for example {value.strip()}Z for UTC"
        )
    return parsed


def sources_from_directory(
    root: Path, *, camera_id: str | None = None, captured_at: datetime | None = None, id_from: str = "path"
) -> list[IngestSource]:
    """List the image files under `root`, sorted; ids are paths relative to `root` or content hashes."""
    paths = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    return [
        IngestSource(
            path=path,
            id=path.relative_to(root).as_posix() if id_from == "path" else None,
            camera_id=camera_id,
            captured_at=captured_at,
        )
        for path in paths
    ]


def sources_from_csv(
    csv_path: Path, *, camera_id: str | None = None, captured_at: datetime | None = None
) -> list[IngestSource]:
    """Read a CSV with the columns path (required), id, camera_id and captured_at.

    Relative paths are resolved against the CSV's folder. Empty cells fall back to the defaults: the
    path relative to the CSV's folder as id, and the given camera id and capture time.
    """
    with csv_path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames or "path" not in reader.fieldnames:
            raise InvalidRequestError(
                f"{csv_path} has columns {reader.fieldnames}; expected a header with path and optionally "
                "id, camera_id, captured_at"
            )
        sources = []
        for line, row in enumerate(reader, start=2):
            raw_path = (row.get("path") or "").strip()
            if not raw_path:
                raise InvalidRequestError(f"{csv_path}:{line}: the path cell is empty")
            path = Path(raw_path) if Path(raw_path).is_absolute() else csv_path.parent / raw_path
            time_cell = (row.get("captured_at") or "").strip()
            sources.append(
                IngestSource(
                    path=path,
                    id=(row.get("id") or "").strip() or Path(raw_path).as_posix(),
                    camera_id=(row.get("camera_id") or "").strip() or camera_id,
                    captured_at=parse_captured_at(time_cell, where=f"{csv_path}:{line}")
                    if time_cell
                    else captured_at,
                )
            )
    return sources


def read_source(source: IngestSource, *, max_file_bytes: int) -> IngestItem:
    """Read one crop file into an `IngestItem`, checking its size before reading it."""
    try:
        size = source.path.stat().st_size
        check_file_size(size, max_bytes=max_file_bytes, filename=str(source.path))
        data = source.path.read_bytes()
    except OSError as e:
        raise UnreadableFileError(f"cannot read {source.path}: {e.strerror or e}") from e
    return IngestItem(
        data=data,
        filename=str(source.path),
        id=source.id,
        camera_id=source.camera_id,
        captured_at=source.captured_at,
    )


@dataclass
class IngestSummary:
    """Totals of a bulk ingest and the failures, as (file, error) pairs."""

    created: int = 0
    updated: int = 0
    failures: list[tuple[str, ErrorInfo]] = field(default_factory=list)

    def add(self, outcome: IngestOutcome, filename: str) -> None:
        if outcome.status == "created":
            self.created += 1
        elif outcome.status == "updated":
            self.updated += 1
        else:
            assert outcome.error is not None
            self.failures.append((filename, outcome.error))


def ingest_sources(
    engine: SearchEngine,
    sources: Sequence[IngestSource],
    *,
    batch_size: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> IngestSummary:
    """Ingest crop files from disk, reading one batch at a time so memory stays bounded."""
    batch_size = batch_size or engine.settings.encode_batch_size
    summary = IngestSummary()
    for start in range(0, len(sources), batch_size):
        chunk = sources[start : start + batch_size]
        items: list[IngestItem] = []
        for source in chunk:
            try:
                items.append(read_source(source, max_file_bytes=engine.settings.max_file_bytes))
            except ServiceError as e:
                summary.failures.append((str(source.path), describe(e)))
                if progress is not None:
                    progress(1)
        for outcome in ingest(engine, items, batch_size=batch_size, progress=progress):
            summary.add(outcome, items[outcome.index].filename or "")
    return summary


# --- reindex -----------------------------------------------------------------------------------


def reindex(
    store: GalleryStore,
    engine_encode: Callable[[Sequence[Any]], Any],
    *,
    model_identity: str,
    dim: int,
    limits: DecodeLimits,
    batch_size: int = 64,
    progress: Callable[[int, int], None] | None = None,
) -> ReindexReport:
    """Re-embed every stored crop with another model and swap the new embeddings in when all are done.

    `engine_encode` maps decoded RGB images to embeddings (N, D) of the new model. Crops are decoded
    through `model.preprocess` with `limits`, as at ingest.
    """

    def embed(crops: Sequence[bytes]) -> Any:
        images = [decode_image(crop, limits).image for crop in crops]
        return engine_encode(images)

    report = store.reindex(
        embed, model_identity=model_identity, dim=dim, batch_size=batch_size, progress=progress
    )
    logger.info(
        "reindex done: %d rewritten, %d failed, model %s (%d-d)",
        report.rewritten,
        len(report.failed),
        report.model_identity,
        report.dim,
    )
    return report
