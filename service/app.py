"""The FastAPI application: `create_app(settings)` wires settings, state, middleware, errors and routes.

Middleware, outermost first: request metrics, CORS (only when AXM_CORS_ORIGINS is set), the
request body limit. The lifespan starts loading one `Encoder` and one `GalleryStore` in a worker
thread and closes the gallery at shutdown; see `service.state` for readiness.

Open routes (no API key): `/health`, `/ready`, `/metrics`, `/`, `/static/...`, `/docs` and
`/openapi.json`. Every other route needs a read key, and routes that change the gallery a write key,
whenever keys are configured.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.auth import API_KEY_HEADER
from service.errors import install_error_handlers
from service.limits import BodySizeLimitMiddleware
from service.metrics import RequestMetricsMiddleware
from service.routes import gallery, health, search
from service.settings import Settings, get_settings
from service.state import AppState

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
VERSION = "0.1.0"
DESCRIPTION = f"""
Text-to-person search over a gallery of pedestrian crops embedded with AXM-Net.

**Auth.** When API keys are configured, send one in the `{API_KEY_HEADER}` header: a read key for searches
and reads, a write key for uploads and deletes (a write key also reads). `/health`, `/ready`, `/metrics`,
`/` and `/static/...` are open.

**Errors.** Every error is JSON `{{"error": code, "detail": message}}`: 401 missing or wrong key, 403
read-only key on a write route, 404 unknown id, 409 gallery built with another model, 413 a size limit, 415
unsupported image, 422 invalid input, 503 not ready.

**Ids** may contain `/` (`cam3/2026-12-01T10:00:00Z/track17`); they must not be `stats`, end with the
segment `image`, or contain empty, `.` or `..` segments.
"""


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Load the engine in the background while serving; close the gallery at shutdown."""
    state: AppState = app.state.axm
    loading = asyncio.create_task(state.load())
    try:
        yield
    finally:
        # A load in progress runs in a thread that cannot be interrupted: wait for it, then close.
        await asyncio.shield(loading)
        await state.close()
        logger.info("service stopped")


async def index_page() -> FileResponse:
    """Serve the search page, or 404 when service/static/index.html is not installed."""
    page = STATIC_DIR / "index.html"
    if not page.is_file():
        raise StarletteHTTPException(
            404, "no web page is installed (service/static/index.html is missing); use the API"
        )
    return FileResponse(page)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; `settings` defaults to the environment and overrides the settings dependency."""
    settings = settings if settings is not None else get_settings()
    app = FastAPI(
        title="AXM-Net person search",
        version=VERSION,
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.axm = AppState(settings)
    app.dependency_overrides[get_settings] = lambda: settings

    install_error_handlers(app)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_request_bytes)
    if settings.cors_origin_list:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origin_list,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=[API_KEY_HEADER, "Content-Type"],
        )
    app.add_middleware(RequestMetricsMiddleware, metrics=app.state.axm.metrics)

    app.include_router(health.router)
    app.include_router(search.router)
    app.include_router(gallery.router)
    app.add_api_route("/", index_page, include_in_schema=False)
    app.mount("/static", StaticFiles(directory=STATIC_DIR, check_dir=False), name="static")
    return app
