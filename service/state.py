"""Per-app state: settings, metrics, the engine once loaded, and the dependencies routes use to reach them.

The engine loads in a worker thread after the app starts, so `/health` responds at once and
`/ready` turns 200 only when the model and the gallery are loaded and one warm-up inference has
run. A load failure is kept: `/ready` reports it as 503 and data routes raise it again, so a
gallery built with another model answers 409 `model_mismatch` with the fix in its detail.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import anyio
import anyio.to_thread
from fastapi import Depends, Request

from service.engine import SearchEngine, open_engine
from service.errors import NotReadyError, describe
from service.metrics import ServiceMetrics
from service.settings import Settings, get_settings

logger = logging.getLogger(__name__)

T = TypeVar("T")


class AppState:
    """State of one app instance that lives between requests."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = ServiceMetrics()
        self.engine: SearchEngine | None = None
        self.load_error: BaseException | None = None
        # Worker threads for blocking calls (model, gallery); the engine bounds forward passes further.
        self.limiter = anyio.CapacityLimiter(settings.worker_threads)
        self.metrics.track_gallery_size(self.gallery_size)

    def gallery_size(self) -> int:
        """Items in the gallery, 0 before it is open."""
        return self.engine.store.count() if self.engine is not None else 0

    async def run(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a blocking call in a worker thread, at most `worker_threads` at once."""
        return await anyio.to_thread.run_sync(
            functools.partial(function, *args, **kwargs), limiter=self.limiter
        )

    def _load_blocking(self) -> SearchEngine:
        started = time.perf_counter()
        engine = open_engine(self.settings, metrics=self.metrics)
        try:
            engine.warm_up()
        except BaseException:
            engine.close()
            raise
        logger.info(
            "service ready in %.1f s: model %s (%d-d), %s gallery of %d items",
            time.perf_counter() - started,
            engine.model_identity,
            engine.dim,
            engine.backend,
            engine.store.count(),
        )
        return engine

    async def load(self) -> None:
        """Load the engine in a worker thread; keep the error if loading fails."""
        try:
            self.engine = await anyio.to_thread.run_sync(self._load_blocking)
        except Exception as e:
            self.load_error = e
            info = describe(e)
            logger.error(
                "service failed to load and stays not ready: %s: %s",
                info.code,
                info.detail,
                exc_info=e if info.code == "internal_error" else None,
            )

    def require_engine(self) -> SearchEngine:
        """Return the engine, or raise the load error or `NotReadyError`."""
        if self.engine is not None:
            return self.engine
        if self.load_error is not None:
            raise self.load_error.with_traceback(None)
        raise NotReadyError("the model and the gallery are still loading; retry when GET /ready returns 200")

    async def close(self) -> None:
        """Close the gallery."""
        if self.engine is not None:
            await anyio.to_thread.run_sync(self.engine.close)
            self.engine = None


def get_state(request: Request) -> AppState:
    """Dependency: the state of the app serving the request."""
    return request.app.state.axm


def get_engine(request: Request) -> SearchEngine:
    """Dependency: the loaded engine; 503 while loading, the load error if loading failed."""
    return get_state(request).require_engine()


StateDep = Annotated[AppState, Depends(get_state)]
EngineDep = Annotated[SearchEngine, Depends(get_engine)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
