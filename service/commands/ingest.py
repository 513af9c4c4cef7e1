"""`axm ingest DIR|CSV`: bulk-ingest crops into the gallery, with a progress bar and a failure list.

A folder is searched recursively for image files. Each id is the file's path relative to the folder,
or the sha256 of its bytes with `--id-from content`; `--camera-id` and `--captured-at` apply to
every file. A CSV has the columns path (required), id, camera_id and captured_at; empty
cells fall back to the options. Locally the command opens the data directory itself, which fails
while a service holds it; `--url` sends the crops to that service's `POST /gallery` instead. The
exit status is 1 when any file failed.

`--ray ADDRESS` runs the same steps as a Ray Data job (`service.ray_ingest`): `local` starts a Ray
runtime on 127.0.0.1 only, any other value is the address of a running cluster.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path
from typing import Any

from service.commands.common import (
    SettingsRejected,
    add_store_arguments,
    fail,
    load_settings,
    store_overrides,
)

logger = logging.getLogger(__name__)

# Files per POST /gallery with --url; the service's default limit is 64 files per request.
HTTP_BATCH = 32


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of `axm ingest`."""
    parser.add_argument(
        "source", type=Path, help="folder of crops, or a CSV with columns path,id,camera_id,captured_at"
    )
    parser.add_argument("--camera-id", help="camera of every crop (a CSV's camera_id column overrides it)")
    parser.add_argument("--captured-at", help="capture time of every crop, ISO 8601 with timezone")
    parser.add_argument(
        "--id-from",
        choices=("path", "content"),
        default="path",
        help="ids of a folder's crops: the relative path (default) or the sha256 of the bytes",
    )
    parser.add_argument(
        "--batch-size", type=int, help="crops per forward pass (default AXM_ENCODE_BATCH_SIZE, 32)"
    )
    parser.add_argument(
        "--url", help="base URL of a running service to upload to, for example http://127.0.0.1:8000"
    )
    parser.add_argument(
        "--api-key", default=os.environ.get("AXM_API_KEY"), help="write API key (default: $AXM_API_KEY)"
    )
    add_store_arguments(parser)
    from service.commands import ingest_ray

    ingest_ray.add_arguments(parser)


def _sources(args: argparse.Namespace) -> list[Any]:
    from service import jobs

    captured_at = (
        jobs.parse_captured_at(args.captured_at, where="--captured-at") if args.captured_at else None
    )
    if args.source.is_dir():
        return jobs.sources_from_directory(
            args.source, camera_id=args.camera_id, captured_at=captured_at, id_from=args.id_from
        )
    if args.source.is_file() and args.source.suffix.lower() == ".csv":
        return jobs.sources_from_csv(args.source, camera_id=args.camera_id, captured_at=captured_at)
    raise FileNotFoundError(f"{args.source} is neither a folder nor a .csv file")


def _report(created: int, updated: int, failures: list[tuple[str, str, str]]) -> int:
    print(f"{created} created, {updated} updated, {len(failures)} failed")
    if not failures:
        return 0
    print("failed files:")
    for filename, code, detail in failures:
        print(f"  {filename}: {code}: {detail}")
    return 1


def ingest_local(args: argparse.Namespace, sources: list[Any]) -> int:
    """Embed and store the crops in this process."""
    from tqdm import tqdm

    from service import jobs
    from service.engine import open_engine

    settings = load_settings(**store_overrides(args))
    engine = open_engine(settings)
    try:
        with tqdm(total=len(sources), unit="crop", desc="ingest") as bar:
            summary = jobs.ingest_sources(engine, sources, batch_size=args.batch_size, progress=bar.update)
    finally:
        engine.close()
    failures = [(filename, info.code, info.detail) for filename, info in summary.failures]
    return _report(summary.created, summary.updated, failures)


def _upload_batch(client: Any, url: str, batch: list[Any], headers: dict[str, str]) -> list[dict[str, Any]]:
    files = []
    specs = []
    for source in batch:
        files.append(("files", (source.path.name, source.path.read_bytes())))
        specs.append(
            {
                "id": source.id,
                "camera_id": source.camera_id,
                "captured_at": source.captured_at.isoformat() if source.captured_at else None,
            }
        )
    response = client.post(f"{url}/gallery", files=files, data={"items": json.dumps(specs)}, headers=headers)
    if response.status_code != 200:
        raise RuntimeError(f"{url}/gallery returned {response.status_code}: {response.text[:300]}")
    return response.json()["results"]


def ingest_remote(args: argparse.Namespace, sources: list[Any]) -> int:
    """Upload the crops to a running service in batches."""
    import httpx
    from tqdm import tqdm

    url = args.url.rstrip("/")
    headers = {"X-API-Key": args.api_key} if args.api_key else {}
    batch_size = min(args.batch_size or HTTP_BATCH, HTTP_BATCH)
    created = updated = 0
    failures: list[tuple[str, str, str]] = []
    with httpx.Client(timeout=300.0) as client, tqdm(total=len(sources), unit="crop", desc="upload") as bar:
        for start in range(0, len(sources), batch_size):
            batch = sources[start : start + batch_size]
            try:
                results = _upload_batch(client, url, batch, headers)
            except (OSError, httpx.HTTPError, RuntimeError) as e:
                failures.extend((str(source.path), "upload_failed", str(e)) for source in batch)
                bar.update(len(batch))
                continue
            for source, result in zip(batch, results, strict=True):
                if result["status"] == "created":
                    created += 1
                elif result["status"] == "updated":
                    updated += 1
                else:
                    failures.append((str(source.path), result["error"]["error"], result["error"]["detail"]))
            bar.update(len(batch))
    return _report(created, updated, failures)


def run(args: argparse.Namespace) -> int:
    """Run `axm ingest`."""
    from index.store import GalleryError
    from model.errors import ModelError
    from service.errors import ServiceError, describe

    try:
        sources = _sources(args)
    except (ServiceError, OSError) as e:
        return fail("ingest", str(e))
    if not sources:
        return fail("ingest", f"no image files found in {args.source}")
    logger.info("ingesting %d crops from %s", len(sources), args.source)
    if args.url:
        return ingest_remote(args, sources)
    if args.ray:
        from service.commands import ingest_ray

        return ingest_ray.run_command(args, sources)
    try:
        return ingest_local(args, sources)
    except SettingsRejected as e:
        return fail("ingest", str(e))
    except (ServiceError, GalleryError, ModelError) as e:
        return fail("ingest", describe(e).detail)
