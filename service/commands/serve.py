"""`axm serve`: run the HTTP service under uvicorn.

Settings come from the `AXM_` environment; the options here override them. They are passed on
through the environment, because with `--workers` above 1 every worker process builds its own app.
A host other than loopback without API keys is refused before anything starts.
"""

from __future__ import annotations

import argparse
import logging
import os

from service.commands.common import (
    SettingsRejected,
    add_store_arguments,
    fail,
    load_settings,
    store_overrides,
)

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of `axm serve`."""
    parser.add_argument("--host", help="interface to listen on (overrides AXM_HOST; default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="TCP port (overrides AXM_PORT; default 8000)")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes (default 1; the FAISS backend allows only 1, because one process may write a gallery)",
    )
    add_store_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Validate the settings, then serve until interrupted."""
    import uvicorn

    overrides = store_overrides(args)
    if args.host is not None:
        overrides["host"] = args.host
    if args.port is not None:
        overrides["port"] = args.port
    try:
        settings = load_settings(**overrides)
    except SettingsRejected as e:
        return fail("serve", str(e))
    if args.workers < 1:
        return fail("serve", f"--workers must be at least 1, got {args.workers}")
    if args.workers > 1 and settings.index_backend == "faiss":
        return fail(
            "serve",
            f"--workers {args.workers} needs a backend shared between processes; the FAISS gallery allows one "
            "writer process. Use --workers 1, or AXM_INDEX_BACKEND=milvus",
        )

    for name, value in overrides.items():
        os.environ[f"AXM_{name.upper()}"] = str(value)
    logger.info("serving on http://%s:%d with %d worker(s)", settings.host, settings.port, args.workers)
    uvicorn.run(
        "service.app:create_app", factory=True, host=settings.host, port=settings.port, workers=args.workers
    )
    return 0
