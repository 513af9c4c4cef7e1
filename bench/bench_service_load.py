"""HTTP load against the service: real crops and captions, batched uploads, concurrent searches.

Every request goes to a service the benchmark started on 127.0.0.1. Request counts are fixed by the
caller, so each run is bounded.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

# Long enough for a 16-client queue behind one inference slot on a busy 2-core CPU.
REQUEST_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class Crop:
    """One encoded crop file, read into memory before timing starts."""

    name: str
    data: bytes


def load_crops(directory: Path, count: int) -> list[Crop]:
    """Read the first `count` image files of `directory` in name order."""
    paths = sorted(p for p in directory.iterdir() if p.suffix.lower() in {".png", ".jpg", ".jpeg"})
    if len(paths) < count:
        raise SystemExit(f"{directory} has {len(paths)} crops; {count} were requested. Lower --crops")
    return [Crop(name=path.name, data=path.read_bytes()) for path in paths[:count]]


def load_captions(annotations: Path, count: int, *, seed: int) -> list[str]:
    """Return `count` real captions from a captions_all.json file, shuffled with `seed`.

    Captions repeat only when `count` exceeds the number in the file.
    """
    records = json.loads(annotations.read_text(encoding="utf-8"))
    captions = [caption for record in records for caption in record.get("captions", []) if caption.strip()]
    if not captions:
        raise SystemExit(f"{annotations} contains no captions; expected records with a `captions` list")
    random.Random(seed).shuffle(captions)
    repeats = -(-count // len(captions))
    return (captions * repeats)[:count]


def percentile_ms(seconds: list[float], q: float) -> float:
    """Return the q-th percentile (0..100) of latencies given in seconds, in milliseconds."""
    return float(np.percentile(np.asarray(seconds) * 1000.0, q)) if seconds else float("nan")


# --- ingest ------------------------------------------------------------------------------------------


@dataclass
class IngestRun:
    """Totals of crops uploaded in batches over POST /gallery, one request at a time."""

    crops: int = 0
    seconds: float = 0.0
    batch_seconds: list[float] = field(default_factory=list)
    created: int = 0
    updated: int = 0
    rejected: int = 0

    @property
    def crops_per_s(self) -> float:
        return self.crops / self.seconds if self.seconds else float("nan")

    def post_batch(self, client: httpx.Client, batch: list[Crop]) -> None:
        """Upload one batch as one POST /gallery and add its time and outcome to the totals."""
        files = [("files", (crop.name, crop.data, "image/png")) for crop in batch]
        sent = time.perf_counter()
        response = client.post("/gallery", files=files, timeout=REQUEST_TIMEOUT_S)
        elapsed = time.perf_counter() - sent
        if response.status_code != 200:
            raise SystemExit(f"POST /gallery returned {response.status_code}: {response.text[:500]}")
        body = response.json()
        self.crops += len(batch)
        self.seconds += elapsed
        self.batch_seconds.append(elapsed)
        self.created += body["created"]
        self.updated += body["updated"]
        self.rejected += body["rejected"]


# --- search ------------------------------------------------------------------------------------------


@dataclass
class SearchRun:
    """Latencies seen by the clients of one concurrency level, with the service's own `took_ms`."""

    clients: int
    seconds: float
    latencies_s: list[float] = field(default_factory=list)
    took_ms: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def requests_per_s(self) -> float:
        return len(self.latencies_s) / self.seconds if self.seconds else float("nan")

    def extend(self, other: SearchRun) -> None:
        """Add the requests and the wall time of another run at the same concurrency."""
        self.seconds += other.seconds
        self.latencies_s += other.latencies_s
        self.took_ms += other.took_ms
        self.errors += other.errors


async def _search_worker(
    client: httpx.AsyncClient, queue: asyncio.Queue[str], run: SearchRun, top_k: int
) -> None:
    while True:
        try:
            text = queue.get_nowait()
        except asyncio.QueueEmpty:
            return
        sent = time.perf_counter()
        try:
            response = await client.post("/search", json={"text": text, "top_k": top_k})
        except httpx.HTTPError as e:
            run.errors.append(f"{type(e).__name__}: {e}")
            continue
        elapsed = time.perf_counter() - sent
        if response.status_code != 200:
            run.errors.append(f"{response.status_code}: {response.text[:200]}")
            continue
        run.latencies_s.append(elapsed)
        run.took_ms.append(float(response.json()["took_ms"]))


async def _search_level(url: str, captions: list[str], clients: int, top_k: int) -> SearchRun:
    queue: asyncio.Queue[str] = asyncio.Queue()
    for caption in captions:
        queue.put_nowait(caption)
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    run = SearchRun(clients=clients, seconds=0.0)
    async with httpx.AsyncClient(base_url=url, timeout=REQUEST_TIMEOUT_S, limits=limits) as client:
        started = time.perf_counter()
        await asyncio.gather(*(_search_worker(client, queue, run, top_k) for _ in range(clients)))
        run.seconds = time.perf_counter() - started
    return run


def search_level(url: str, captions: list[str], *, clients: int, top_k: int) -> SearchRun:
    """Send one POST /search per caption from `clients` concurrent keep-alive connections."""
    return asyncio.run(_search_level(url, captions, clients, top_k))
