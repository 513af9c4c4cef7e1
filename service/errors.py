"""Service errors and the one table that maps every domain error to an HTTP status and a stable code.

Errors raised by the service itself, all under `ServiceError`:

    ServiceError
    ├── InvalidRequestError       a field is malformed (422)
    │   ├── InvalidTextError      a description is empty, blank or contains control characters (422)
    │   ├── InvalidIdError        an item id is ambiguous in URLs (422)
    │   ├── InvalidTopKError      top_k is outside 1..max_top_k (422)
    │   └── UnreadableFileError   a file named for bulk ingest cannot be read (422)
    ├── PayloadTooLargeError      a size limit is exceeded (413)
    │   ├── RequestTooLargeError  the request body is larger than max_request_bytes (413)
    │   ├── TooManyFilesError     more files than max_files_per_request (413)
    │   ├── FileTooLargeError     one file is larger than max_file_bytes (413)
    │   └── TextTooLongError      a description is longer than max_text_chars (413)
    ├── UnsupportedMediaTypeError the request's Content-Type is not the one the route reads (415)
    ├── MissingApiKeyError        no X-API-Key header on a protected route (401)
    ├── InvalidApiKeyError        the X-API-Key matches no configured key (401)
    ├── ReadOnlyKeyError          a read key was sent to a write route (403)
    ├── NotReadyError             the model or the gallery is still loading (503)
    └── MissingCheckpointError    the configured checkpoint file does not exist (503)

Errors of `index` (gallery) and `model` (images, checkpoints) keep their own classes; `ERROR_TABLE`
gives each its status and code. A class missing from the table resolves through its base classes,
so a new subclass is never reported as an unhandled 500. Every response body has the shape
`{"error": code, "detail": message}`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from index.store import (
    GalleryError,
    InvalidConfigError,
    InvalidCursorError,
    InvalidItemError,
    ItemNotFoundError,
    ModelMismatchError,
    StoreCorruptError,
    StoreLockedError,
    StoreNotFoundError,
    StoreUnavailableError,
)
from model.checkpoint import CheckpointError
from model.errors import ModelError
from model.preprocess import (
    CorruptImageError,
    ImageError,
    ImageTooLargeError,
    ImageTooSmallError,
    UnsupportedImageError,
)

logger = logging.getLogger(__name__)


class ServiceError(Exception):
    """Base class of the errors raised by the service layer."""


class InvalidRequestError(ServiceError, ValueError):
    """Raised when a request field is malformed."""


class InvalidTextError(InvalidRequestError):
    """Raised when a description is empty, only whitespace, or contains control characters."""


class InvalidIdError(InvalidRequestError):
    """Raised when an item id cannot be addressed unambiguously in a URL."""


class InvalidTopKError(InvalidRequestError):
    """Raised when top_k is outside 1..max_top_k."""


class UnreadableFileError(InvalidRequestError):
    """Raised when a file named for bulk ingest cannot be read from disk."""


class PayloadTooLargeError(ServiceError):
    """Raised when a size limit of the service is exceeded."""


class RequestTooLargeError(PayloadTooLargeError):
    """Raised when a request body is larger than max_request_bytes."""


class TooManyFilesError(PayloadTooLargeError):
    """Raised when one request carries more files than max_files_per_request."""


class FileTooLargeError(PayloadTooLargeError):
    """Raised when one uploaded file is larger than max_file_bytes."""


class TextTooLongError(PayloadTooLargeError):
    """Raised when a description is longer than max_text_chars."""


class UnsupportedMediaTypeError(ServiceError):
    """Raised when a request's Content-Type is not the one its route reads."""


class MissingApiKeyError(ServiceError):
    """Raised when a protected route is called without an X-API-Key header."""


class InvalidApiKeyError(ServiceError):
    """Raised when the X-API-Key header matches no configured key."""


class ReadOnlyKeyError(ServiceError):
    """Raised when a read-only key is sent to a route that writes."""


class NotReadyError(ServiceError):
    """Raised when a route needs the model or the gallery before they are loaded."""


class MissingCheckpointError(ServiceError):
    """Raised when the checkpoint file named in the settings does not exist."""


@dataclass(frozen=True)
class ErrorSpec:
    """HTTP status and stable error code of one error class."""

    status: int
    code: str


# The one table from error classes to HTTP statuses. Lookup walks the class's MRO, so the most
# specific entry wins and subclasses added later inherit their base's status.
ERROR_TABLE: dict[type[BaseException], ErrorSpec] = {
    # service
    InvalidRequestError: ErrorSpec(422, "invalid_request"),
    InvalidTextError: ErrorSpec(422, "invalid_text"),
    InvalidIdError: ErrorSpec(422, "invalid_id"),
    InvalidTopKError: ErrorSpec(422, "invalid_top_k"),
    UnreadableFileError: ErrorSpec(422, "unreadable_file"),
    PayloadTooLargeError: ErrorSpec(413, "payload_too_large"),
    RequestTooLargeError: ErrorSpec(413, "request_too_large"),
    TooManyFilesError: ErrorSpec(413, "too_many_files"),
    FileTooLargeError: ErrorSpec(413, "file_too_large"),
    TextTooLongError: ErrorSpec(413, "text_too_long"),
    UnsupportedMediaTypeError: ErrorSpec(415, "unsupported_media_type"),
    MissingApiKeyError: ErrorSpec(401, "missing_api_key"),
    InvalidApiKeyError: ErrorSpec(401, "invalid_api_key"),
    ReadOnlyKeyError: ErrorSpec(403, "read_only_key"),
    NotReadyError: ErrorSpec(503, "not_ready"),
    MissingCheckpointError: ErrorSpec(503, "model_unavailable"),
    ServiceError: ErrorSpec(500, "service_error"),
    # index
    ItemNotFoundError: ErrorSpec(404, "not_found"),
    ModelMismatchError: ErrorSpec(409, "model_mismatch"),
    InvalidItemError: ErrorSpec(422, "invalid_item"),
    InvalidCursorError: ErrorSpec(422, "invalid_cursor"),
    StoreCorruptError: ErrorSpec(503, "store_unavailable"),
    StoreLockedError: ErrorSpec(503, "store_locked"),
    StoreUnavailableError: ErrorSpec(503, "store_unavailable"),
    StoreNotFoundError: ErrorSpec(503, "store_unavailable"),
    InvalidConfigError: ErrorSpec(503, "store_unavailable"),
    GalleryError: ErrorSpec(500, "gallery_error"),
    # model
    UnsupportedImageError: ErrorSpec(415, "unsupported_image"),
    CorruptImageError: ErrorSpec(422, "corrupt_image"),
    ImageTooLargeError: ErrorSpec(413, "image_too_large"),
    ImageTooSmallError: ErrorSpec(422, "image_too_small"),
    ImageError: ErrorSpec(422, "invalid_image"),
    CheckpointError: ErrorSpec(503, "model_unavailable"),
    ModelError: ErrorSpec(500, "model_error"),
    # FastAPI request parsing
    RequestValidationError: ErrorSpec(422, "invalid_request"),
}

INTERNAL_ERROR = ErrorSpec(500, "internal_error")
# Codes of plain HTTP errors raised by routing (unknown path, wrong method).
HTTP_STATUS_CODES = {404: "not_found", 405: "method_not_allowed", 400: "bad_request"}


def lookup(error_type: type[BaseException]) -> ErrorSpec:
    """Return the table entry of `error_type` or of its nearest base class; 500 when none matches."""
    for cls in error_type.__mro__:
        spec = ERROR_TABLE.get(cls)
        if spec is not None:
            return spec
    return INTERNAL_ERROR


@dataclass(frozen=True)
class ErrorInfo:
    """An error as the API reports it: status, stable code and a message for people."""

    status: int
    code: str
    detail: str

    def body(self) -> dict[str, str]:
        """Return the JSON body `{"error": code, "detail": detail}`."""
        return {"error": self.code, "detail": self.detail}


def describe(exc: BaseException) -> ErrorInfo:
    """Translate an exception into the status, code and message the API reports."""
    if isinstance(exc, RequestValidationError):
        return ErrorInfo(422, "invalid_request", format_validation_errors(exc.errors()))
    if isinstance(exc, StarletteHTTPException):
        code = HTTP_STATUS_CODES.get(exc.status_code, "http_error")
        return ErrorInfo(exc.status_code, code, str(exc.detail))
    spec = lookup(type(exc))
    if spec is INTERNAL_ERROR:
        return ErrorInfo(500, spec.code, "unexpected internal error; the server log has the traceback")
    detail = str(exc) or spec.code.replace("_", " ")
    return ErrorInfo(spec.status, spec.code, detail)


def format_validation_errors(errors: Any) -> str:
    """Join pydantic's validation errors into one message naming each field.

    Input values are left out except numbers and booleans, because a rejected field may be the query
    text, which is never echoed or logged.
    """
    parts = []
    for error in errors:
        location = ".".join(str(part) for part in error.get("loc", ()))
        message = error.get("msg", "invalid value")
        value = error.get("input")
        if isinstance(value, bool | int | float):
            message = f"{message} (got {value!r})"
        parts.append(f"{location}: {message}" if location else message)
    return "; ".join(parts) or "invalid request"


def error_response(info: ErrorInfo, headers: dict[str, str] | None = None) -> JSONResponse:
    """Build the JSON response of an error."""
    return JSONResponse(info.body(), status_code=info.status, headers=headers)


def log_error(request_method: str, path: str, info: ErrorInfo, exc: BaseException | None = None) -> None:
    """Log one error response with its path, which carries the item id on gallery routes.

    Unexpected errors get their traceback; `not_ready` is expected while loading and logs at INFO.
    Details never contain query text: text errors name lengths and positions only.
    """
    message = "%s %s -> %d %s: %s"
    arguments = (request_method, path, info.status, info.code, info.detail)
    if info.code == INTERNAL_ERROR.code:
        logger.error(message, *arguments, exc_info=exc)
    elif info.code == "not_ready":
        logger.info(message, *arguments)
    elif info.status >= 500:
        logger.error(message, *arguments)
    else:
        logger.warning(message, *arguments)


async def handle_error(request: Request, exc: Exception) -> JSONResponse:
    """Exception handler for every mapped error class."""
    info = describe(exc)
    log_error(request.method, request.url.path, info, exc)
    headers = {"WWW-Authenticate": "X-API-Key"} if info.status == 401 else None
    if isinstance(exc, StarletteHTTPException) and exc.headers:
        headers = {**(headers or {}), **exc.headers}
    return error_response(info, headers)


def install_error_handlers(app: FastAPI) -> None:
    """Register `handle_error` for every class of the table, plain HTTP errors and anything unexpected."""
    for error_type in ERROR_TABLE:
        app.add_exception_handler(error_type, handle_error)
    app.add_exception_handler(StarletteHTTPException, handle_error)
    app.add_exception_handler(Exception, handle_error)
