"""API-key checks for read and write routes (header `X-API-Key`).

Auth is on whenever at least one key is configured (`AXM_API_KEYS_READ`, `AXM_API_KEYS_WRITE`), and
`Settings` refuses to start on a non-loopback host without keys. A write key is accepted on every
route; a read key only on read routes (403 on a write route). A missing header is 401
`missing_api_key`, an unknown key 401 `invalid_api_key`. `/health`, `/ready`, `/metrics`, `/`,
`/static/...`, `/docs` and `/openapi.json` are open: they carry no gallery data.

Keys are compared with `hmac.compare_digest` against every configured key, without stopping at the
first match, so the response time does not reveal how much of a key was right.
"""

from __future__ import annotations

import hmac
import logging
from enum import Enum
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader

from service.errors import InvalidApiKeyError, MissingApiKeyError, ReadOnlyKeyError
from service.settings import Settings, get_settings

logger = logging.getLogger(__name__)

API_KEY_HEADER = "X-API-Key"
api_key_header = APIKeyHeader(
    name=API_KEY_HEADER,
    auto_error=False,
    description="Read key or write key; required when keys are configured.",
)


class Access(Enum):
    """Access level granted by a key."""

    READ = "read"
    WRITE = "write"


def _matches_any(key: bytes, candidates: list[str]) -> bool:
    matched = False
    for candidate in candidates:
        matched |= hmac.compare_digest(key, candidate.encode("utf-8"))
    return matched


def access_of(key: str | None, settings: Settings) -> Access | None:
    """Return what `key` grants, or None for no access; with auth off everything is granted."""
    if not settings.auth_enabled:
        return Access.WRITE
    if not key:
        return None
    encoded = key.encode("utf-8")
    is_write = _matches_any(encoded, settings.write_keys)
    is_read = _matches_any(encoded, settings.read_keys)
    if is_write:
        return Access.WRITE
    return Access.READ if is_read else None


def _check(request: Request, key: str | None, settings: Settings, needed: Access) -> None:
    if not settings.auth_enabled:
        return
    if not key:
        raise MissingApiKeyError(
            f"{request.method} {request.url.path} needs an API key in the {API_KEY_HEADER} header"
        )
    granted = access_of(key, settings)
    if granted is None:
        raise InvalidApiKeyError(f"the {API_KEY_HEADER} header matches no configured key; check the key")
    if needed is Access.WRITE and granted is not Access.WRITE:
        raise ReadOnlyKeyError(
            f"{request.method} {request.url.path} changes the gallery and needs a write key; this key is read-only"
        )


async def require_read(
    request: Request,
    key: Annotated[str | None, Security(api_key_header)],
    settings: Annotated[Settings, Depends(get_settings)],
) -> None:
    """Dependency of read routes: any configured key."""
    _check(request, key, settings, Access.READ)


async def require_write(
    request: Request,
    key: Annotated[str | None, Security(api_key_header)],
    settings: Annotated[Settings, Depends(get_settings)],
) -> None:
    """Dependency of write routes: a write key."""
    _check(request, key, settings, Access.WRITE)


ReadAccess = Depends(require_read)
WriteAccess = Depends(require_write)
