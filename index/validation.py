"""Input checks shared by gallery backends: ids, embeddings, items, queries, filters and timestamps.

Every check raises `InvalidItemError` with the offending value, what was expected and how to fix it.
Timestamps are stored as integer microseconds since the Unix epoch (UTC), which keeps comparisons exact.
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from index.store import MAX_ID_LENGTH, InvalidItemError, NewItem, SearchFilters

# Maximum distance of an embedding's L2 norm from 1. Float32 normalisation (error about 1e-7) and a
# float16 round trip (relative rounding at most 2**-11, about 5e-4) stay inside it; raw features do not.
NORM_TOLERANCE = 1e-3
# Unicode categories rejected in ids and labels: control characters (Cc) and lone surrogates (Cs),
# which cannot be encoded as UTF-8 for SQLite.
_REJECTED_CATEGORIES = frozenset({"Cc", "Cs"})
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


@dataclass(frozen=True)
class PreparedItem:
    """A validated `NewItem` in storage form: float32 embedding, crop digest, epoch-microsecond time."""

    id: str
    embedding: np.ndarray
    crop: bytes
    sha256: str
    width: int
    height: int
    camera_id: str | None
    captured_at_us: int | None
    source: str | None
    extra_json: str


def validate_item_id(item_id: object) -> str:
    """Return `item_id` if it is a usable external id, else raise `InvalidItemError`."""
    return _validate_text(item_id, field_name="id", max_length=MAX_ID_LENGTH)


def validate_optional_text(value: object, *, field_name: str) -> str | None:
    """Return `value` if it is None or a valid label (camera_id, source), else raise `InvalidItemError`."""
    if value is None:
        return None
    return _validate_text(value, field_name=field_name, max_length=MAX_ID_LENGTH)


def _validate_text(value: object, *, field_name: str, max_length: int) -> str:
    if not isinstance(value, str):
        raise InvalidItemError(f"{field_name} must be a string, got {type(value).__name__}: {value!r}")
    if not value:
        raise InvalidItemError(f"{field_name} must not be empty")
    if len(value) > max_length:
        raise InvalidItemError(
            f"{field_name} is {len(value)} characters long; the maximum is {max_length}: {value[:40]!r}..."
        )
    for position, char in enumerate(value):
        if unicodedata.category(char) in _REJECTED_CATEGORIES:
            raise InvalidItemError(
                f"{field_name} {value!r} contains the control or surrogate character {char!r} at "
                f"position {position}; use printable characters only"
            )
    return value


def validate_embedding(embedding: object, *, dim: int, subject: str) -> np.ndarray:
    """Return `embedding` as a contiguous float32 (dim,) array, or raise if its shape or norm is wrong."""
    if not isinstance(embedding, np.ndarray):
        raise InvalidItemError(f"{subject}: embedding must be a numpy array, got {type(embedding).__name__}")
    if embedding.shape != (dim,):
        raise InvalidItemError(
            f"{subject}: embedding has shape {embedding.shape}; this gallery stores ({dim},) embeddings"
        )
    if not np.issubdtype(embedding.dtype, np.floating):
        raise InvalidItemError(f"{subject}: embedding dtype is {embedding.dtype}; expected float32")
    vector = np.ascontiguousarray(embedding, dtype=np.float32)
    _check_unit_norm(vector[None, :], subject=subject)
    return vector


def validate_queries(queries: object, *, dim: int) -> np.ndarray:
    """Return query embeddings as contiguous float32 (Q, dim), or raise if shape or norms are wrong."""
    if not isinstance(queries, np.ndarray):
        raise InvalidItemError(f"queries must be a numpy array, got {type(queries).__name__}")
    if queries.ndim != 2 or queries.shape[1] != dim:
        raise InvalidItemError(
            f"queries have shape {queries.shape}; expected (Q, {dim}). Wrap one query as queries[None, :]"
        )
    if not np.issubdtype(queries.dtype, np.floating):
        raise InvalidItemError(f"queries dtype is {queries.dtype}; expected float32")
    matrix = np.ascontiguousarray(queries, dtype=np.float32)
    _check_unit_norm(matrix, subject="query")
    return matrix


def _check_unit_norm(vectors: np.ndarray, *, subject: str) -> None:
    if not np.isfinite(vectors).all():
        raise InvalidItemError(f"{subject}: embedding contains NaN or infinity")
    norms = np.linalg.norm(vectors.astype(np.float64), axis=1)
    bad = np.flatnonzero(np.abs(norms - 1.0) > NORM_TOLERANCE)
    if bad.size:
        row = int(bad[0])
        raise InvalidItemError(
            f"{subject}: embedding row {row} has L2 norm {norms[row]:.6f}; expected 1 within "
            f"{NORM_TOLERANCE}. L2-normalise embeddings before storing or searching them"
        )


def validate_top_k(top_k: object) -> int:
    """Return `top_k` if it is a positive int, else raise `InvalidItemError`."""
    if isinstance(top_k, bool) or not isinstance(top_k, int | np.integer) or top_k < 1:
        raise InvalidItemError(f"top_k must be a positive integer, got {top_k!r}")
    return int(top_k)


def validate_filters(filters: object) -> SearchFilters | None:
    """Return `filters`, or None when absent or empty; raise on naive datetimes or a reversed range."""
    if filters is None:
        return None
    if not isinstance(filters, SearchFilters):
        raise InvalidItemError(f"filters must be a SearchFilters, got {type(filters).__name__}")
    if filters.is_empty:
        return None
    if filters.camera_ids is not None:
        for camera_id in filters.camera_ids:
            validate_optional_text(camera_id, field_name="camera_id filter")
    start = to_epoch_us(filters.captured_from, field_name="captured_from")
    end = to_epoch_us(filters.captured_to, field_name="captured_to")
    if start is not None and end is not None and start > end:
        raise InvalidItemError(
            f"captured_from {filters.captured_from.isoformat()} is after captured_to "
            f"{filters.captured_to.isoformat()}; swap the bounds"
        )
    return filters


def to_epoch_us(value: datetime | None, *, field_name: str) -> int | None:
    """Convert a timezone-aware datetime to integer microseconds since the epoch; None stays None."""
    if value is None:
        return None
    if not isinstance(value, datetime):
        raise InvalidItemError(f"{field_name} must be a datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidItemError(
            f"{field_name} {value.isoformat()} has no timezone; pass a timezone-aware datetime "
            "(for example datetime(..., tzinfo=datetime.UTC))"
        )
    return (value - _EPOCH) // _MICROSECOND


def from_epoch_us(value: int | None) -> datetime | None:
    """Convert integer microseconds since the epoch to a UTC datetime; None stays None."""
    if value is None:
        return None
    return _EPOCH + timedelta(microseconds=value)


def now_epoch_us() -> int:
    """Return the current time as integer microseconds since the epoch."""
    return (datetime.now(UTC) - _EPOCH) // _MICROSECOND


def prepare_item(item: object, *, dim: int, position: int) -> PreparedItem:
    """Validate one `NewItem` and return its storage form; errors name the position and the id."""
    if not isinstance(item, NewItem):
        raise InvalidItemError(f"item {position} must be a NewItem, got {type(item).__name__}")
    item_id = validate_item_id(item.id)
    subject = f"item {position} ({item_id!r})"
    embedding = validate_embedding(item.embedding, dim=dim, subject=subject)
    crop = _validate_crop(item.crop, subject=subject)
    return PreparedItem(
        id=item_id,
        embedding=embedding,
        crop=crop,
        sha256=hashlib.sha256(crop).hexdigest(),
        width=_validate_size(item.width, field_name="width", subject=subject),
        height=_validate_size(item.height, field_name="height", subject=subject),
        camera_id=validate_optional_text(item.camera_id, field_name=f"{subject} camera_id"),
        captured_at_us=to_epoch_us(item.captured_at, field_name=f"{subject} captured_at"),
        source=validate_optional_text(item.source, field_name=f"{subject} source"),
        extra_json=_encode_extra(item.extra, subject=subject),
    )


def _validate_crop(crop: object, *, subject: str) -> bytes:
    if not isinstance(crop, bytes | bytearray | memoryview):
        raise InvalidItemError(f"{subject}: crop must be bytes, got {type(crop).__name__}")
    data = bytes(crop)
    if not data:
        raise InvalidItemError(f"{subject}: crop is empty; pass the encoded image bytes")
    return data


def _validate_size(value: object, *, field_name: str, subject: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise InvalidItemError(f"{subject}: {field_name} must be a positive integer (pixels), got {value!r}")
    return int(value)


def _encode_extra(extra: object, *, subject: str) -> str:
    if not isinstance(extra, dict):
        raise InvalidItemError(f"{subject}: extra must be a dict, got {type(extra).__name__}")
    if any(not isinstance(key, str) for key in extra):
        raise InvalidItemError(f"{subject}: extra keys must be strings, got {sorted(map(repr, extra))}")
    try:
        return json.dumps(extra, sort_keys=True, allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError) as e:
        raise InvalidItemError(
            f"{subject}: extra must contain only JSON values (str, finite numbers, bool, None, lists, dicts): {e}"
        ) from e


def decode_extra(text: str) -> dict[str, Any]:
    """Return the stored `extra` JSON as a dict."""
    value = json.loads(text)
    return value if isinstance(value, dict) else {}
