"""Benchmark the HTTP service on this machine and print the results as Markdown tables.

The script starts the real service itself (`axm serve`, uvicorn, one worker) on 127.0.0.1 with a fresh
data directory, waits for /ready, and stops it at the end. It measures:

1. cold start: seconds from the process start to the first 200 on /health and on /ready;
2. ingest: crops/s over POST /gallery (real crops, `--batch-size` files per request) against the
   model's own batch throughput on the same CPU (decode through `model.preprocess`, then
   `Encoder.encode_images`), with the in-process ingest stages timed one by one;
3. search latency p50/p95/p99 with real captions at each `--clients` level;
4. the split of one-client search latency into text encode, gallery search and the rest, from /metrics;
5. search latency as the gallery grows, over synthetic galleries written straight through `index`;
6. resident memory of the service after the ingest and `--memory-searches` searches.

Usage (from the repository root, in .venv)::

    python bench/bench_service.py                                  # the shipped checkpoint
    python bench/bench_service.py --checkpoint /tmp/axm.safetensors --build-checkpoint
    python bench/bench_service.py --sections main --requests 100   # a shorter run

`--build-checkpoint` writes a checkpoint where `--checkpoint` points, when that file is missing. Its
network is built from the model section of `--model-config` (default: the shipped model's training
config) with packaged pretrained stems and an untrained AXM stage and heads. It has the architecture
and cost of the shipped model, so speed and memory figures carry over, but its rankings are meaningless.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import httpx  # noqa: E402
from bench_service_gallery import grow_synthetic_gallery  # noqa: E402
from bench_service_load import Crop, IngestRun, SearchRun, load_captions, load_crops, search_level  # noqa: E402
from bench_service_model import InProcessIngest  # noqa: E402
from bench_service_report import (  # noqa: E402
    report_breakdown,
    report_cold_starts,
    report_ingest,
    report_memory,
    report_scale,
    report_search,
)
from bench_service_server import (  # noqa: E402
    HistogramDelta,
    ServiceProcess,
    histogram_delta,
    scrape_metrics,
    start_service,
)

SHIPPED_CHECKPOINT = REPO_ROOT / "weights" / "axm-effnet-minilm.safetensors"
SHIPPED_CONFIG = REPO_ROOT / "configs" / "axm_effnet_minilm.yaml"
DEFAULT_DATA_ROOT = Path(os.environ.get("AXM_DATA_ROOT", REPO_ROOT.parent / "shared" / "data"))
WARM_UP_SEARCHES = 10
EMPTY_HISTOGRAMS = {name: HistogramDelta(0.0, 0.0, []) for name in ("request", "encode", "search")}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--checkpoint",
        type=Path,
        default=SHIPPED_CHECKPOINT,
        help="model checkpoint (.safetensors) the service loads (default: the shipped one)",
    )
    parser.add_argument(
        "--build-checkpoint",
        action="store_true",
        help="write an untrained checkpoint of --model-config to --checkpoint when that file is missing",
    )
    parser.add_argument(
        "--model-config",
        type=Path,
        default=SHIPPED_CONFIG,
        help="training config whose model section --build-checkpoint builds (default: the shipped model's)",
    )
    parser.add_argument(
        "--data-root",
        type=Path,
        default=DEFAULT_DATA_ROOT,
        help="real data folder with cuhk_pedes/ (default: $AXM_DATA_ROOT or ../shared/data)",
    )
    parser.add_argument(
        "--sections",
        default="main,scale",
        help="comma-separated: main (cold start, ingest, search, metrics split, memory), "
        "scale (latency versus gallery size); default both",
    )
    parser.add_argument("--crops", type=int, default=1000, help="real crops to ingest (default 1000)")
    parser.add_argument(
        "--batch-size", type=int, default=32, help="files per POST /gallery and model batch (default 32)"
    )
    parser.add_argument(
        "--requests", type=int, default=300, help="searches per concurrency level (default 300)"
    )
    parser.add_argument(
        "--clients", default="1,4,16", help="concurrency levels, comma-separated (default 1,4,16)"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="rounds over the concurrency levels; each round sends requests/rounds per level (default 3)",
    )
    parser.add_argument("--top-k", type=int, default=10, help="results per search (default 10)")
    parser.add_argument(
        "--cold-starts",
        type=int,
        default=3,
        help="cold starts to time; the first is the main service, the rest on empty galleries (default 3)",
    )
    parser.add_argument(
        "--memory-searches",
        type=int,
        default=1000,
        help="searches done in total before the final memory reading (default 1000)",
    )
    parser.add_argument(
        "--gallery-sizes",
        default="10000,100000,1000000",
        help="synthetic gallery sizes for the scale section, comma-separated (default 10k,100k,1M)",
    )
    parser.add_argument(
        "--scale-requests", type=int, default=100, help="one-client searches per gallery size (default 100)"
    )
    parser.add_argument(
        "--scale-write-budget-s",
        type=float,
        default=600.0,
        help="seconds allowed for writing all synthetic galleries; the last size stops where "
        "the budget ends (default 600)",
    )
    parser.add_argument(
        "--index-spec", default="Flat", help="FAISS index spec of every gallery (default Flat)"
    )
    parser.add_argument(
        "--service-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="environment variable for every service process, e.g. OMP_NUM_THREADS=1 (repeatable)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the caption order and synthetic embeddings"
    )
    parser.add_argument(
        "--work-dir", type=Path, help="folder for galleries and logs (default: a new temp folder)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work folder instead of deleting it")
    parser.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    return parser.parse_args(argv)


# --- setup -------------------------------------------------------------------------------------------


def ensure_checkpoint(path: Path, *, build: bool, model_config: Path) -> None:
    """Fail with the fix when the checkpoint is missing, or build an untrained one of `model_config` when asked."""
    if path.is_file():
        return
    if not build:
        raise SystemExit(
            f"checkpoint {path} not found; pass --checkpoint PATH, or add --build-checkpoint to "
            "write an untrained checkpoint of --model-config there"
        )
    import torch

    from model.checkpoint import save_checkpoint
    from model.config import TrainConfig, load_config
    from model.network import build_model

    torch.manual_seed(0)
    config = load_config(model_config, TrainConfig).model
    metadata = {"purpose": "benchmark only: untrained AXM stage and heads", "model_config": str(model_config)}
    identity = save_checkpoint(build_model(config), path, metadata=metadata)
    print(f"wrote untrained checkpoint {path} of {model_config} (identity {identity})", file=sys.stderr)


def describe_hardware() -> str:
    """Return one line naming the CPU (from lscpu), the cores this process may use, the memory and the load."""
    fields: dict[str, str] = {}
    try:
        output = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in output.splitlines():
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    import psutil

    cpu = fields.get("Model name", platform.processor() or "unknown CPU")
    family = f"family {fields['CPU family']} model {fields['Model']}" if "CPU family" in fields else ""
    hypervisor = f", {fields['Hypervisor vendor']} VM" if "Hypervisor vendor" in fields else ""
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    return (
        f"{cpu} ({family}{hypervisor}), {len(os.sched_getaffinity(0))} cores shared with other jobs, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB RAM, no GPU; load average at start {load}"
    )


def checkpoint_label(path: Path) -> str:
    from model.checkpoint import read_checkpoint_info

    info = read_checkpoint_info(path)
    kind = (
        "shipped"
        if path.resolve() == SHIPPED_CHECKPOINT.resolve()
        else info.metadata.get("purpose", "unknown")
    )
    config = info.config
    return (
        f"{path} ({kind}; identity {info.identity}; {config.variant}, {config.image.name} depth "
        f"{config.image.depth}, input {config.input.height}×{config.input.width}, "
        f"{config.head.embed_dim}-d)"
    )


def load_average() -> str:
    return f"{os.getloadavg()[0]:.1f}"


def service_env(args: argparse.Namespace) -> dict[str, str]:
    """Environment variables of every service process: the index spec, then each --service-env."""
    env = {"AXM_INDEX_SPEC": args.index_spec}
    for assignment in args.service_env:
        name, separator, value = assignment.partition("=")
        if not separator or not name:
            raise SystemExit(
                f"--service-env {assignment!r} is invalid; expected NAME=VALUE, e.g. OMP_NUM_THREADS=1"
            )
        env[name] = value
    return env


# --- main service run ----------------------------------------------------------------------------------


def time_extra_cold_starts(args: argparse.Namespace, work: Path, runs: int) -> list[dict[str, Any]]:
    """Start and stop the service `runs` times on empty galleries; return each start's timing."""
    results = []
    for run in range(runs):
        service, timing = start_service(
            checkpoint=args.checkpoint,
            data_dir=work / f"cold-{run}",
            log_path=work / f"cold-{run}.log",
            extra_env=service_env(args),
        )
        service.stop()
        results.append({"run": f"empty gallery, start {run + 2}", **asdict(timing)})
    return results


def run_searches(
    service: ServiceProcess, captions: list[str], clients: int, top_k: int
) -> tuple[SearchRun, dict[str, HistogramDelta]]:
    """Run one concurrency level and return it with the /metrics histograms it added."""
    with httpx.Client(base_url=service.url, timeout=30.0) as client:
        before = scrape_metrics(client)
        run = search_level(service.url, captions, clients=clients, top_k=top_k)
        after = scrape_metrics(client)
    histograms = {
        "request": histogram_delta(
            before, after, "axm_http_request_duration_seconds", {"method": "POST", "route": "/search"}
        ),
        "encode": histogram_delta(before, after, "axm_encode_seconds", {"modality": "text"}),
        "search": histogram_delta(before, after, "axm_search_seconds"),
    }
    return run, histograms


def paired_ingest(
    args: argparse.Namespace, service: ServiceProcess, crops: list[Crop], work: Path
) -> dict[str, Any]:
    """Ingest every batch twice, in this process and over HTTP, back to back.

    Other jobs share the CPU, so the load drifts over minutes. Both paths are measured batch by batch
    in alternating order, so they see the same load and their ratio stays meaningful.
    """
    batches = [crops[first : first + args.batch_size] for first in range(0, len(crops), args.batch_size)]
    omp_threads = service_env(args).get("OMP_NUM_THREADS")
    in_process = InProcessIngest(
        args.checkpoint,
        batch_size=args.batch_size,
        data_dir=work / "in-process",
        warm_up=batches[0],
        threads=int(omp_threads) if omp_threads else None,
    )
    ingest = IngestRun()
    try:
        with httpx.Client(base_url=service.url, timeout=60.0) as client:
            before = scrape_metrics(client)
            for number, batch in enumerate(batches):
                if number % 2 == 0:
                    in_process.run_batch(batch)
                    ingest.post_batch(client, batch)
                else:
                    ingest.post_batch(client, batch)
                    in_process.run_batch(batch)
            after = scrape_metrics(client)
    finally:
        in_process.close()
    metrics = {
        "request": histogram_delta(
            before, after, "axm_http_request_duration_seconds", {"method": "POST", "route": "/gallery"}
        ),
        "encode": histogram_delta(before, after, "axm_encode_seconds", {"modality": "image"}),
    }
    return {
        "ingest": ingest,
        "profile": in_process.profile,
        "in_process_threads": in_process.threads,
        "ingest_metrics": metrics,
    }


def search_rounds(
    args: argparse.Namespace, service: ServiceProcess, captions: list[str]
) -> list[tuple[SearchRun, dict[str, HistogramDelta]]]:
    """Run every concurrency level `--rounds` times in turn and merge each level's rounds.

    Interleaving the levels exposes each to the same drift in machine load. All levels search the
    same captions in a round.
    """
    levels = parse_int_list(args.clients)
    per_round = -(-args.requests // args.rounds)
    merged = {clients: (SearchRun(clients=clients, seconds=0.0), EMPTY_HISTOGRAMS) for clients in levels}
    for round_number in range(args.rounds):
        first = round_number * per_round
        round_captions = captions[first : min(first + per_round, args.requests)]
        if not round_captions:
            break
        for clients in levels:
            run, histograms = run_searches(service, round_captions, clients, args.top_k)
            total, sums = merged[clients]
            total.extend(run)
            merged[clients] = (total, {name: sums[name].plus(histograms[name]) for name in histograms})
    return [merged[clients] for clients in levels]


def run_main(args: argparse.Namespace, work: Path, crops: list[Crop], captions: list[str]) -> dict[str, Any]:
    """Cold start, ingest, search levels, the /metrics split and memory, on one service process."""
    results: dict[str, Any] = {"load_average": {"start": load_average()}}
    results["cold_starts"] = time_extra_cold_starts(args, work, max(args.cold_starts - 1, 0))
    service, timing = start_service(
        checkpoint=args.checkpoint,
        data_dir=work / "gallery",
        log_path=work / "service.log",
        extra_env=service_env(args),
    )
    results["cold_starts"].insert(0, {"run": "main service, empty gallery, start 1", **asdict(timing)})
    memory = [("ready, empty gallery", service.rss_bytes(), service.peak_rss_bytes())]
    try:
        results.update(paired_ingest(args, service, crops, work))
        gc.collect()
        memory.append(
            (f"{results['ingest'].created} crops ingested", service.rss_bytes(), service.peak_rss_bytes())
        )
        results["load_average"]["after_ingest"] = load_average()

        search_level(service.url, captions[-WARM_UP_SEARCHES:], clients=1, top_k=args.top_k)
        results["search"] = search_rounds(args, service, captions)
        searches_done = WARM_UP_SEARCHES + sum(
            len(run.latencies_s) + len(run.errors) for run, _ in results["search"]
        )
        results["load_average"]["after_search"] = load_average()

        remaining = args.memory_searches - searches_done
        if remaining > 0:
            search_level(service.url, captions[:remaining], clients=4, top_k=args.top_k)
            searches_done += remaining
        memory.append((f"{searches_done} searches done", service.rss_bytes(), service.peak_rss_bytes()))
        results["memory"] = memory
    finally:
        service.stop()
    results["load_average"]["end"] = load_average()
    return results


# --- gallery size run ----------------------------------------------------------------------------------


def run_scale(args: argparse.Namespace, work: Path, captions: list[str], rows: list[dict[str, Any]]) -> None:
    """Grow one synthetic gallery through the requested sizes; after each, search it over HTTP.

    Each size appends its row to `rows` as soon as it is measured, so a failure keeps the rows before it.
    """
    from model.checkpoint import read_checkpoint_info

    info = read_checkpoint_info(args.checkpoint)
    data_dir = work / "synthetic"
    deadline = time.perf_counter() + args.scale_write_budget_s
    for target in parse_int_list(args.gallery_sizes):
        write = grow_synthetic_gallery(
            data_dir,
            model_identity=info.identity,
            dim=info.config.head.embed_dim,
            target=target,
            deadline=deadline,
            seed=args.seed,
            index_spec=args.index_spec,
        )
        service, timing = start_service(
            checkpoint=args.checkpoint,
            data_dir=data_dir,
            log_path=work / f"scale-{write.count}.log",
            extra_env=service_env(args),
        )
        try:
            search_level(service.url, captions[-WARM_UP_SEARCHES:], clients=1, top_k=args.top_k)
            run, histograms = run_searches(service, captions[: args.scale_requests], 1, args.top_k)
            rss = service.rss_bytes()
        finally:
            service.stop()
        rows.append(
            {
                "target": target,
                "write": write,
                "ready_s": timing.ready_s,
                "run": run,
                "histograms": histograms,
                "rss": rss,
                "load_average": load_average(),
            }
        )
        if write.count < target:
            break  # the write budget ran out; larger sizes would stop at the same count


def parse_int_list(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def with_context(section: str, command: str, hardware: str) -> str:
    """Put the command and the hardware under a section's heading, so each table states both."""
    heading, _, body = section.partition("\n\n")
    return f"{heading}\n\nCommand: `{command}`. Hardware: {hardware}.\n\n{body}"


def to_json(value: Any) -> Any:
    if hasattr(value, "__dataclass_fields__"):
        return {key: to_json(item) for key, item in asdict(value).items()}
    if isinstance(value, dict):
        return {str(key): to_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(item) for item in value]
    return value


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sections = {part.strip() for part in args.sections.split(",") if part.strip()}
    unknown = sections - {"main", "scale"}
    if unknown:
        raise SystemExit(f"unknown sections {sorted(unknown)}; use main, scale or both")
    ensure_checkpoint(args.checkpoint, build=args.build_checkpoint, model_config=args.model_config)
    hardware = describe_hardware()
    command = "python " + shlex.join(["bench/bench_service.py", *(sys.argv[1:] if argv is None else argv)])
    pedes = args.data_root / "cuhk_pedes"
    crops = load_crops(pedes / "imgs" / "CUHK01", args.crops)
    captions = load_captions(
        pedes / "annotations" / "captions_all.json",
        max(args.requests, args.memory_searches, args.scale_requests) + WARM_UP_SEARCHES,
        seed=args.seed,
    )

    extra_env = ", ".join(f"{name}={value}" for name, value in service_env(args).items())
    emit(f"Checkpoint: {checkpoint_label(args.checkpoint)}. Service environment: {extra_env}.")
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="axm-bench-service-"))
    work.mkdir(parents=True, exist_ok=True)
    figures: dict[str, Any] = {"command": command, "hardware": hardware}
    # Each section prints (and saves) its tables as soon as it ends, so a later failure loses nothing.
    try:
        if "main" in sections:
            results = run_main(args, work, crops, captions)
            figures["main"] = results
            save_figures(args.json, figures)
            for text in (
                report_cold_starts(results),
                report_ingest(results, args),
                report_search(results),
                report_breakdown(results),
                report_memory(results),
            ):
                emit(with_context(text, command, hardware))
            emit(
                "Load average (1 min) during the main run: "
                + ", ".join(f"{moment} {value}" for moment, value in results["load_average"].items())
            )
        if "scale" in sections:
            rows: list[dict[str, Any]] = []
            figures["scale"] = rows
            try:
                run_scale(args, work, captions, rows)
            finally:
                save_figures(args.json, figures)
                if rows:
                    emit(with_context(report_scale(rows, args), command, hardware))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


def emit(text: str) -> None:
    print(text + "\n", flush=True)


def save_figures(path: Path | None, figures: dict[str, Any]) -> None:
    if path is not None:
        path.write_text(json.dumps(to_json(figures), indent=2, default=str), encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
