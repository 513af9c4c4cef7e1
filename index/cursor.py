"""Opaque listing cursors: the last id of a page and the filters, signed with the store's secret.

Listing is keyset pagination on the id, so a cursor stays valid while items are added or deleted:
every id present for the whole listing is visited exactly once. The HMAC rejects cursors made by
another store or edited by hand, and the filter digest rejects a cursor reused with other filters.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json

from index.store import InvalidCursorError, SearchFilters
from index.validation import to_epoch_us

_SIGNATURE_BYTES = 16


def filters_digest(filters: SearchFilters | None) -> str:
    """Return a short digest identifying `filters` (None and empty filters share one)."""
    if filters is None or filters.is_empty:
        canonical: object = None
    else:
        canonical = [
            sorted(filters.camera_ids) if filters.camera_ids is not None else None,
            to_epoch_us(filters.captured_from, field_name="captured_from"),
            to_epoch_us(filters.captured_to, field_name="captured_to"),
        ]
    return hashlib.sha256(json.dumps(canonical).encode()).hexdigest()[:16]


def encode_cursor(secret: bytes, after_id: str, filters: SearchFilters | None) -> str:
    payload = json.dumps({"after": after_id, "filters": filters_digest(filters)}, ensure_ascii=False).encode()
    signature = hmac.new(secret, payload, hashlib.sha256).digest()[:_SIGNATURE_BYTES]
    return base64.urlsafe_b64encode(signature + payload).decode("ascii").rstrip("=")


def decode_cursor(secret: bytes, cursor: str, filters: SearchFilters | None) -> str:
    """Return the id after which the next page starts; raise `InvalidCursorError` for a foreign cursor."""
    if not isinstance(cursor, str) or not cursor:
        raise InvalidCursorError(f"cursor must be a non-empty string from a previous page, got {cursor!r}")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    except (binascii.Error, ValueError) as e:
        raise InvalidCursorError(
            f"cursor {cursor[:40]!r} is not a cursor of this gallery; start from page one"
        ) from e
    signature, payload = raw[:_SIGNATURE_BYTES], raw[_SIGNATURE_BYTES:]
    expected = hmac.new(secret, payload, hashlib.sha256).digest()[:_SIGNATURE_BYTES]
    if not hmac.compare_digest(signature, expected):
        raise InvalidCursorError(
            f"cursor {cursor[:40]!r} was not produced by this gallery; start from page one"
        )
    data = json.loads(payload)
    if data["filters"] != filters_digest(filters):
        raise InvalidCursorError(
            "cursor was produced for other filters; pass the same filters as the first page or start again"
        )
    return str(data["after"])
