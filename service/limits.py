"""Request limits, each checked before any decoding or inference, and the rule for item ids in URLs.

| limit | setting | status, code |
|---|---|---|
| request body bytes (Content-Length and streamed bytes) | AXM_MAX_REQUEST_BYTES | 413 request_too_large |
| files in one upload | AXM_MAX_FILES_PER_REQUEST | 413 too_many_files |
| bytes of one file | AXM_MAX_FILE_BYTES | 413 file_too_large |
| pixels of one image, read from its header | AXM_MAX_IMAGE_PIXELS | 413 image_too_large |
| smallest crop | AXM_MIN_CROP_WIDTH, AXM_MIN_CROP_HEIGHT | 422 image_too_small |
| characters of one description | AXM_MAX_TEXT_CHARS | 413 text_too_long |
| top_k | AXM_MAX_TOP_K | 422 invalid_top_k |

Item ids may contain `/`, so `GET /gallery/cam3/2026-12-01T10:00:00Z/track17` addresses the id
`cam3/2026-12-01T10:00:00Z/track17`. So that every URL stays unambiguous, these ids are rejected:
- `stats`, which is the statistics route;
- ids whose last segment is `image`, because `/gallery/{id}/image` serves a crop;
- ids that start or end with `/`, or contain an empty, `.` or `..` segment, which clients normalise away.
"""

from __future__ import annotations

import unicodedata

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from index.store import MAX_ID_LENGTH
from model.preprocess import DecodeLimits
from service.errors import (
    FileTooLargeError,
    InvalidIdError,
    InvalidTextError,
    InvalidTopKError,
    RequestTooLargeError,
    TextTooLongError,
    TooManyFilesError,
    describe,
    error_response,
    log_error,
)
from service.settings import Settings

# Whitespace control characters that descriptions may contain; every other Cc (and any lone
# surrogate, category Cs) is rejected.
ALLOWED_CONTROL = frozenset("\t\n\r")
RESERVED_IDS = frozenset({"stats"})
IMAGE_SEGMENT = "image"


def decode_limits(settings: Settings) -> DecodeLimits:
    """Translate the settings into the image limits of `model.preprocess`."""
    return DecodeLimits(
        max_pixels=settings.max_image_pixels,
        min_width=settings.min_crop_width,
        min_height=settings.min_crop_height,
    )


def first_control_character(text: str) -> int | None:
    """Return the position of the first disallowed control character or lone surrogate, or None."""
    for position, char in enumerate(text):
        if char in ALLOWED_CONTROL:
            continue
        if unicodedata.category(char) in ("Cc", "Cs"):
            return position
    return None


def check_text(text: str, *, max_chars: int) -> str:
    """Validate a description; messages name lengths and positions, never the text itself."""
    if len(text) > max_chars:
        raise TextTooLongError(
            f"text has {len(text)} characters; the limit is {max_chars} (AXM_MAX_TEXT_CHARS). "
            "Shorten the description: the model reads only its first tokens anyway"
        )
    if not text.strip():
        raise InvalidTextError("text is empty or only whitespace; send a description of the person")
    position = first_control_character(text)
    if position is not None:
        raise InvalidTextError(
            f"text contains the control character U+{ord(text[position]):04X} at position {position}; "
            "remove it (tab, newline and carriage return are allowed)"
        )
    return text


def check_top_k(top_k: int, *, max_top_k: int) -> int:
    """Validate the number of results asked for."""
    if not 1 <= top_k <= max_top_k:
        raise InvalidTopKError(f"top_k must be between 1 and {max_top_k} (AXM_MAX_TOP_K); got {top_k}")
    return top_k


def check_file_count(count: int, *, max_files: int) -> None:
    """Reject an upload with more files than allowed, before any file is read."""
    if count > max_files:
        raise TooManyFilesError(
            f"request carries {count} files; the limit is {max_files} per request "
            "(AXM_MAX_FILES_PER_REQUEST); split the upload into several requests"
        )


def file_too_large(size: int, *, max_bytes: int, filename: str | None) -> FileTooLargeError:
    """Return the error for one file of `size` bytes over the limit."""
    return FileTooLargeError(
        f"file {filename or '(unnamed)'!r} has {size} bytes; the limit is {max_bytes} bytes "
        "(AXM_MAX_FILE_BYTES); send a person crop rather than a full frame, or compress it"
    )


def check_file_size(size: int, *, max_bytes: int, filename: str | None) -> None:
    """Reject one file larger than allowed, before it is decoded."""
    if size > max_bytes:
        raise file_too_large(size, max_bytes=max_bytes, filename=filename)


def check_item_id(item_id: str) -> str:
    """Validate an id chosen by a client against the URL rule in this module's docstring."""
    if not item_id:
        raise InvalidIdError("id is empty; send a non-empty id or leave it out to use the content hash")
    if len(item_id) > MAX_ID_LENGTH:
        raise InvalidIdError(f"id has {len(item_id)} characters; the limit is {MAX_ID_LENGTH}")
    position = first_control_character(item_id)
    if position is not None:
        raise InvalidIdError(
            f"id contains the control character U+{ord(item_id[position]):04X} at position {position}"
        )
    if item_id in RESERVED_IDS:
        raise InvalidIdError(f"id {item_id!r} is reserved: GET /gallery/{item_id} serves gallery statistics")
    if item_id.startswith("/") or item_id.endswith("/"):
        raise InvalidIdError(f"id {item_id!r} starts or ends with '/'; remove the leading or trailing slash")

    segments = item_id.split("/")
    if any(segment in ("", ".", "..") for segment in segments):
        raise InvalidIdError(
            f"id {item_id!r} contains an empty, '.' or '..' segment, which URLs normalise away"
        )
    if segments[-1] == IMAGE_SEGMENT:
        raise InvalidIdError(
            f"id {item_id!r} ends with the segment 'image', which is the crop URL of another id; rename it"
        )
    return item_id


class BodySizeLimitMiddleware:
    """Reject request bodies larger than `max_bytes` with 413, by Content-Length and by counted bytes.

    A declared Content-Length over the limit is rejected before the route runs. A body without one
    (chunked) is counted as it streams; on overflow the route's own response is discarded and the
    413 is sent instead.
    """

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _error(self, received: str) -> RequestTooLargeError:
        return RequestTooLargeError(
            f"request body has {received} bytes; the limit is {self.max_bytes} bytes (AXM_MAX_REQUEST_BYTES); "
            "send fewer or smaller files per request"
        )

    async def _reject(self, scope: Scope, receive: Receive, send: Send, error: RequestTooLargeError) -> None:
        info = describe(error)
        log_error(scope.get("method", "?"), scope.get("path", "?"), info)
        await error_response(info)(scope, receive, send)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._reject(scope, receive, send, self._error(str(declared)))
            return

        received = 0
        exceeded = False
        response_started = False

        async def receive_counted() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    exceeded = True
                    raise self._error(f"more than {self.max_bytes}")
            return message

        async def send_unless_exceeded(message: Message) -> None:
            nonlocal response_started
            if exceeded:
                return
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, receive_counted, send_unless_exceeded)
        except Exception:
            if not exceeded:
                raise
        if exceeded and not response_started:
            await self._reject(scope, receive, send, self._error(f"more than {self.max_bytes}"))


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
