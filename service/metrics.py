"""Prometheus metrics of one app, in a registry of its own so that several apps can live in one process.

Exported series (names as Prometheus shows them):

| metric | type | labels |
|---|---|---|
| axm_http_requests_total | counter | method, route (the route template), status |
| axm_http_request_duration_seconds | histogram | method, route |
| axm_encode_seconds | histogram | modality (text, image); one observation per forward batch |
| axm_encoded_items_total | counter | modality |
| axm_search_seconds | histogram | one observation per gallery search call |
| axm_gallery_items | gauge | items in the gallery, read when scraped |

Requests that match no route are labelled `route="unmatched"`, so unknown URLs cannot grow the
number of series.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
UNMATCHED_ROUTE = "unmatched"
# Request latency buckets in seconds: from a cached health check to a large upload.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class ServiceMetrics:
    """The metric objects of one app and the registry that exports them."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "axm_http_requests",
            "HTTP requests by route template and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "axm_http_request_duration_seconds",
            "HTTP request latency by route template, in seconds.",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.encode_seconds = Histogram(
            "axm_encode_seconds",
            "Model forward time per batch, in seconds.",
            ["modality"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.encoded_items = Counter(
            "axm_encoded_items", "Images or descriptions embedded.", ["modality"], registry=self.registry
        )
        self.search_seconds = Histogram(
            "axm_search_seconds",
            "Gallery search time per call, in seconds.",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.gallery_items = Gauge("axm_gallery_items", "Items in the gallery.", registry=self.registry)

    def track_gallery_size(self, count: Callable[[], int]) -> None:
        """Read the gallery size from `count` whenever the metrics are scraped."""
        self.gallery_items.set_function(count)

    @contextmanager
    def time_encode(self, modality: str, items: int) -> Iterator[None]:
        """Time one forward batch of `items` images or descriptions."""
        started = time.perf_counter()
        yield
        self.encode_seconds.labels(modality).observe(time.perf_counter() - started)
        self.encoded_items.labels(modality).inc(items)

    @contextmanager
    def time_search(self) -> Iterator[None]:
        """Time one gallery search call."""
        started = time.perf_counter()
        yield
        self.search_seconds.observe(time.perf_counter() - started)

    def render(self) -> bytes:
        """Return every series in the Prometheus text format."""
        return generate_latest(self.registry)


class RequestMetricsMiddleware:
    """Count requests and time them per route template (for example `/gallery/{item_id:path}`)."""

    def __init__(self, app: ASGIApp, *, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        started = time.perf_counter()
        status = 500

        async def send_and_record_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record_status)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or UNMATCHED_ROUTE
            method = scope.get("method", "?")
            self.metrics.requests.labels(method, template, str(status)).inc()
            self.metrics.request_seconds.labels(method, template).observe(time.perf_counter() - started)
