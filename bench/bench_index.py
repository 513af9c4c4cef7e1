"""Measure the gallery index: add throughput, search latency, recall@10 and memory per item.

Each (size, spec) row runs in its own process. The data is synthetic: unit vectors drawn around one
random centre per 50 items (like crops of one person), with noise of norm `--noise` (0.75 gives a
cosine to the centre of about 0.8). Queries are drawn the same way. Recall@10 is measured against the
exact top 10, computed by numpy over the same vectors. Latency is per single-query search.

Memory per item is the size of the saved FAISS index, which is what the process keeps in memory for
search. The JSON output also records the RSS growth during the build (it includes the generated data)
and, for the store path, the SQLite and crop bytes on disk.

Two paths:
- `store`: `FaissGalleryStore.upsert` in batches (SQLite commit, one crop file of `--crop-bytes` per
  item, FAISS add, index.faiss saves and IVF training as they fall due), then `search` with metadata.
- `direct`: the store's FAISS structure (`index.faiss_index.FaissIndex`) alone: train, add, search.

    python bench/bench_index.py --sizes 10000 100000 --specs Flat HNSW32 IVF1024,Flat --path store
    python bench/bench_index.py --sizes 1000000 --specs Flat HNSW32 IVF1024,Flat --path direct
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import faiss
import numpy as np
import psutil

from index.faiss_index import FaissIndex, SearchTuning, inspect_spec
from index.faiss_store import FaissGalleryStore, FaissStoreConfig
from index.store import NewItem

ITEMS_PER_CENTRE = 50
CHUNK = 50_000
TOP_K = 10


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[10_000, 100_000], help="gallery sizes (items)"
    )
    parser.add_argument("--specs", nargs="+", default=["Flat", "HNSW32", "IVF1024,Flat"], help="index specs")
    parser.add_argument("--path", choices=["store", "direct"], default="store", help="what is measured")
    parser.add_argument("--dim", type=int, default=512, help="embedding dimension")
    parser.add_argument(
        "--noise", type=float, default=0.75, help="norm of the noise around each centre; larger is harder"
    )
    parser.add_argument("--queries", type=int, default=200, help="single-query searches timed per row")
    parser.add_argument("--batch-size", type=int, default=1000, help="items per upsert call (store path)")
    parser.add_argument("--crop-bytes", type=int, default=1024, help="bytes of the stand-in crop per item")
    parser.add_argument("--ivf-nprobe", type=int, default=32, help="IVF lists probed per search")
    parser.add_argument("--hnsw-ef-search", type=int, default=128, help="HNSW efSearch")
    parser.add_argument(
        "--search-threads",
        type=int,
        default=1,
        help="OpenMP threads during the timed single-query searches (builds use every CPU); a service "
        "answers concurrent queries on separate threads instead",
    )
    parser.add_argument(
        "--work-dir", type=Path, default=None, help="where store rows write (default: a temp dir)"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON to this file")
    return parser.parse_args(argv)


@dataclass(frozen=True)
class SyntheticGallery:
    """Seeded clustered unit vectors; the same (size, dim, noise) always gives the same data."""

    size: int
    dim: int
    noise: float

    def chunks(self, chunk: int = CHUNK) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield (labels, unit vectors) chunks of the gallery."""
        centres = self._centres()
        for start in range(0, self.size, chunk):
            count = min(chunk, self.size - start)
            rng = np.random.default_rng([1, start])
            owners = rng.integers(0, len(centres), size=count)
            yield np.arange(start, start + count, dtype=np.int64), self._around(centres[owners], rng)

    def queries(self, count: int) -> np.ndarray:
        centres = self._centres()
        rng = np.random.default_rng(2)
        return self._around(centres[rng.integers(0, len(centres), size=count)], rng)

    def sample(self, count: int) -> np.ndarray:
        """Return `count` gallery vectors spread over the whole gallery, for training."""
        step = max(1, self.size // count)
        parts = [vectors[(labels % step) == 0] for labels, vectors in self.chunks()]
        return np.concatenate(parts)[:count]

    def exact_top_k(self, queries: np.ndarray) -> np.ndarray:
        """Return the exact top-10 labels (Q, 10) of each query by a chunked numpy inner product."""
        best_labels = np.empty((len(queries), 0), dtype=np.int64)
        best_scores = np.empty((len(queries), 0), dtype=np.float32)
        for labels, vectors in self.chunks():
            scores = np.concatenate([best_scores, queries @ vectors.T], axis=1)
            candidates = np.concatenate(
                [best_labels, np.broadcast_to(labels, (len(queries), len(labels)))], axis=1
            )
            keep = np.argsort(-scores, axis=1)[:, :TOP_K]
            best_scores = np.take_along_axis(scores, keep, axis=1)
            best_labels = np.take_along_axis(candidates, keep, axis=1)
        return best_labels

    def _centres(self) -> np.ndarray:
        count = max(1, self.size // ITEMS_PER_CENTRE)
        centres = np.random.default_rng(0).standard_normal((count, self.dim)).astype(np.float32)
        return centres / np.linalg.norm(centres, axis=1, keepdims=True)

    def _around(self, centres: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        noise = rng.standard_normal(centres.shape).astype(np.float32) * (self.noise / np.sqrt(self.dim))
        vectors = centres + noise
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def recall_at_k(found: list[set[int]], exact: np.ndarray) -> float:
    return sum(len(hits & set(row.tolist())) for hits, row in zip(found, exact, strict=True)) / exact.size


def latency_summary(seconds: list[float]) -> dict[str, float]:
    ordered = sorted(seconds)
    return {
        "p50_ms": statistics.median(ordered) * 1000,
        "p99_ms": ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))] * 1000,
    }


def rss_bytes() -> int:
    return psutil.Process().memory_info().rss


def run_direct(size: int, spec: str, args: argparse.Namespace) -> dict[str, object]:
    """Build the store's FAISS structure alone, then time single-query searches."""
    info = inspect_spec(spec, args.dim)
    gallery = SyntheticGallery(size, args.dim, args.noise)
    rss_before = rss_bytes()
    started = time.perf_counter()
    index = FaissIndex.build(
        info,
        args.dim,
        count=size,
        chunks=gallery.chunks,
        train_sample=gallery.sample,
    )
    build_s = time.perf_counter() - started
    memory = rss_bytes() - rss_before
    with tempfile.TemporaryDirectory(prefix="bench-index-", dir=args.work_dir) as scratch:
        index_bytes, _ = index.save(Path(scratch) / "index.faiss")

    tuning = SearchTuning(ivf_nprobe=args.ivf_nprobe, hnsw_ef_search=args.hnsw_ef_search)
    queries = gallery.queries(args.queries)
    faiss.omp_set_num_threads(args.search_threads)
    seconds, found = [], []
    for query in queries:
        started = time.perf_counter()
        labels, _ = index.search(query[None, :], TOP_K, allowed=None, tuning=tuning)[0]
        seconds.append(time.perf_counter() - started)
        found.append(set(labels.tolist()))

    return {
        "build_s": build_s,
        "add_per_s": size / build_s,
        "recall_at_10": recall_at_k(found, gallery.exact_top_k(queries)),
        "rss_bytes_per_item": memory / size,
        "index_bytes_per_item": index_bytes / size,
        "active_spec": index.built_spec,
        **latency_summary(seconds),
    }


def run_store(size: int, spec: str, args: argparse.Namespace) -> dict[str, object]:
    """Ingest through `FaissGalleryStore.upsert`, then time single-query searches that return metadata."""
    work_dir = Path(tempfile.mkdtemp(prefix="bench-index-", dir=args.work_dir))
    config = FaissStoreConfig(ivf_nprobe=args.ivf_nprobe, hnsw_ef_search=args.hnsw_ef_search)
    gallery = SyntheticGallery(size, args.dim, args.noise)
    try:
        store = FaissGalleryStore.open(
            work_dir / "gallery", model_identity="bench", dim=args.dim, index_spec=spec, config=config
        )
        rss_before = rss_bytes()
        started = time.perf_counter()
        for labels, vectors in gallery.chunks():
            for start in range(0, len(labels), args.batch_size):
                store.upsert(
                    _items(
                        labels[start : start + args.batch_size],
                        vectors[start : start + args.batch_size],
                        args,
                    )
                )
        ingest_s = time.perf_counter() - started
        memory = rss_bytes() - rss_before
        queries = gallery.queries(args.queries)
        faiss.omp_set_num_threads(args.search_threads)
        seconds, found = [], []
        for query in queries:
            started = time.perf_counter()
            hits = store.search(query[None, :], top_k=TOP_K)[0]
            seconds.append(time.perf_counter() - started)
            found.append({int(hit.item.id) for hit in hits})
        active_spec = store.active_index_spec
        started = time.perf_counter()
        store.close()
        close_s = time.perf_counter() - started
        disk = _disk_bytes(work_dir / "gallery")
        return {
            "build_s": ingest_s,
            "add_per_s": size / ingest_s,
            "close_s": close_s,
            "recall_at_10": recall_at_k(found, gallery.exact_top_k(queries)),
            "rss_bytes_per_item": memory / size,
            "disk_bytes_per_item": {name: value / size for name, value in disk.items()},
            "index_bytes_per_item": disk["index_faiss"] / size,
            "active_spec": active_spec,
            **latency_summary(seconds),
        }
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)


def _items(labels: np.ndarray, vectors: np.ndarray, args: argparse.Namespace) -> list[NewItem]:
    items = []
    for label, vector in zip(labels, vectors, strict=True):
        seed = hashlib.sha256(int(label).to_bytes(8, "little")).digest()
        crop = (seed * (args.crop_bytes // len(seed) + 1))[: args.crop_bytes]
        items.append(
            NewItem(
                id=f"{int(label):09d}",
                embedding=vector,
                crop=crop,
                width=128,
                height=256,
                camera_id=f"cam{label % 8}",
            )
        )
    return items


def _disk_bytes(directory: Path) -> dict[str, int]:
    sqlite_bytes = sum(path.stat().st_size for path in directory.glob("gallery.sqlite3*"))
    crops = sum(path.stat().st_size for path in (directory / "crops").rglob("*") if path.is_file())
    return {"sqlite": sqlite_bytes, "index_faiss": (directory / "index.faiss").stat().st_size, "crops": crops}


def _run_row(size: int, spec: str, args: argparse.Namespace, results: multiprocessing.Queue) -> None:
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    load_before = os.getloadavg()[0]
    row = (run_store if args.path == "store" else run_direct)(size, spec, args)
    results.put(
        {
            "size": size,
            "spec": spec,
            "path": args.path,
            "noise": args.noise,
            "load_avg_1min": [load_before, os.getloadavg()[0]],
            **row,
        }
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    context = multiprocessing.get_context("spawn")
    rows = []
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, faiss {faiss.__version__}")
    print("| path | size | spec | add/s | build s | p50 ms | p99 ms | recall@10 | index B/item | load |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for size in args.sizes:
        for spec in args.specs:
            results = context.Queue()
            process = context.Process(target=_run_row, args=(size, spec, args, results))
            process.start()
            process.join()
            if process.exitcode != 0:
                print(f"row {size} {spec} failed with exit code {process.exitcode}", file=sys.stderr)
                return 1
            row = results.get(timeout=60)
            rows.append(row)
            print(
                f"| {row['path']} | {size:,} | {spec} ({row['active_spec']}) | {row['add_per_s']:,.0f} | "
                f"{row['build_s']:.1f} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} | {row['recall_at_10']:.3f} | "
                f"{row['index_bytes_per_item']:,.0f} | {row['load_avg_1min'][0]:.1f}-{row['load_avg_1min'][1]:.1f} |",
                flush=True,
            )
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
