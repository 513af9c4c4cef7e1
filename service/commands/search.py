"""`axm search "description"`: rank the gallery and print a table, through a running service or locally.

With `--url`, the query goes to `POST /search` of that service (API key from `--api-key` or the
`AXM_API_KEY` environment variable). Without it, the command loads the checkpoint and opens the
data directory itself, read-only, so it can run beside a service that holds the write lock.
"""

from __future__ import annotations

import argparse
import logging
import os
from datetime import datetime
from typing import Any

from service.commands.common import (
    SettingsRejected,
    add_store_arguments,
    fail,
    load_settings,
    store_overrides,
)

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of `axm search`."""
    parser.add_argument("text", help="description of the person, in quotes")
    parser.add_argument("--top-k", type=int, default=10, help="number of results (default 10)")
    parser.add_argument("--camera", action="append", help="keep items of this camera; repeat for several")
    parser.add_argument("--from", dest="captured_from", help="earliest capture time, ISO 8601 with timezone")
    parser.add_argument("--to", dest="captured_to", help="latest capture time, ISO 8601 with timezone")
    parser.add_argument("--url", help="base URL of a running service, for example http://127.0.0.1:8000")
    parser.add_argument(
        "--api-key", default=os.environ.get("AXM_API_KEY"), help="API key (default: $AXM_API_KEY)"
    )
    parser.add_argument("--timeout", type=float, default=60.0, help="HTTP timeout in seconds (default 60)")
    add_store_arguments(parser)


def format_results(results: list[dict[str, Any]]) -> str:
    """Render ranked results as a fixed-width table."""
    header = f"{'rank':>4}  {'score':>7}  {'camera':<10}  {'captured_at':<25}  id"
    lines = [header, "-" * len(header)]
    for result in results:
        captured = result.get("captured_at") or "-"
        if isinstance(captured, datetime):
            captured = captured.isoformat()
        lines.append(
            f"{result['rank']:>4}  {result['score']:>7.4f}  {(result.get('camera_id') or '-'):<10}  "
            f"{captured:<25}  {result['id']}"
        )
    return "\n".join(lines)


def _filters(args: argparse.Namespace) -> dict[str, Any]:
    filters: dict[str, Any] = {}
    if args.camera:
        filters["camera_ids"] = args.camera
    if args.captured_from:
        filters["captured_from"] = args.captured_from
    if args.captured_to:
        filters["captured_to"] = args.captured_to
    return filters


def search_remote(args: argparse.Namespace) -> int:
    """Send the query to a running service and print its ranking."""
    import httpx

    body: dict[str, Any] = {"text": args.text, "top_k": args.top_k}
    if filters := _filters(args):
        body["filters"] = filters
    headers = {"X-API-Key": args.api_key} if args.api_key else {}
    try:
        response = httpx.post(
            f"{args.url.rstrip('/')}/search", json=body, headers=headers, timeout=args.timeout
        )
    except httpx.HTTPError as e:
        return fail("search", f"request to {args.url} failed: {e}")
    if response.status_code != 200:
        try:
            error = response.json()
            message = f"{error['error']}: {error['detail']}"
        except (ValueError, KeyError, TypeError):
            message = response.text[:200]
        return fail("search", f"{args.url} returned {response.status_code}: {message}")
    payload = response.json()
    _print(payload["results"], payload["tokens_used"], payload["truncated"], payload["took_ms"])
    return 0


def search_local(args: argparse.Namespace) -> int:
    """Load the model, open the gallery read-only and print the ranking."""
    from pydantic import ValidationError

    from index.store import GalleryError, StoreNotFoundError
    from model.errors import ModelError
    from service.engine import open_engine
    from service.errors import ServiceError, describe
    from service.schemas import SearchFiltersBody, SearchResult

    try:
        settings = load_settings(**store_overrides(args))
        filters = SearchFiltersBody.model_validate(_filters(args)).to_filters()
    except (SettingsRejected, ValidationError) as e:
        return fail("search", str(e))

    try:
        engine = open_engine(settings, read_only=True)
    except StoreNotFoundError as e:
        return fail(
            "search",
            f"{e} (`axm ingest DIR` or POST /gallery), pass --data-dir for a gallery elsewhere, "
            "or --url to ask a running service",
        )
    except (ServiceError, GalleryError, ModelError) as e:
        return fail("search", describe(e).detail)
    try:
        outcome = engine.search_text(args.text, top_k=args.top_k, filters=filters)
    except ServiceError as e:
        return fail("search", describe(e).detail)
    finally:
        engine.close()
    results = [SearchResult.from_hit(hit).model_dump() for hit in outcome.hits]
    _print(results, outcome.tokens_used, outcome.truncated, outcome.took_ms)
    return 0


def _print(results: list[dict[str, Any]], tokens_used: int, truncated: bool, took_ms: float) -> None:
    print(format_results(results))
    note = " (description truncated to the model's token limit)" if truncated else ""
    print(f"{len(results)} results in {took_ms:.1f} ms; {tokens_used} tokens used{note}")


def run(args: argparse.Namespace) -> int:
    """Run `axm search`."""
    if args.url:
        return search_remote(args)
    return search_local(args)
