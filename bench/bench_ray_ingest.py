"""Measure bulk-ingest throughput: `axm ingest` in one process against `axm ingest --ray local`.

Each run is the real command in a fresh process, as an operator starts it, on real CUHK03 crops listed
in a CSV (the files are read in place), into a new FAISS gallery. Every path runs at two sizes; the
difference gives the marginal rate (crops per second once running) and the fixed start-up cost
(model load; for Ray also the runtime, its workers and the actor):

    marginal rate = (large - small) / (wall(large) - wall(small))
    start-up      = wall(small) - small / marginal rate

The machine may be shared, so the script also adds up the CPU time of the command's whole process tree
(sampled every 0.2 s; each process counts with its last sample). CPU seconds per crop compare the
paths without the share of the CPUs that other processes took.

The checkpoint is the default configuration (EfficientNet-Lite0 + all-MiniLM-L6-v2, 256×128 input,
512-d) with the packaged pretrained stems and untrained AXM layers: the cost of a forward pass does not
depend on the weights.

    python bench/bench_ray_ingest.py --sizes 40 240 --actors 1
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
DATA_ROOT = Path(os.environ.get("AXM_DATA_ROOT", REPO_ROOT.parent / "shared" / "data"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs=2, default=[40, 240], help="small and large crop counts")
    parser.add_argument("--actors", type=int, default=1, help="Ray model actors")
    parser.add_argument("--batch-size", type=int, default=32, help="crops per batch on both paths")
    parser.add_argument("--paths", nargs="+", default=["single", "ray"], choices=["single", "ray"])
    parser.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    return parser.parse_args(argv)


def build_checkpoint(path: Path) -> str:
    """Write a default-configuration checkpoint; return its identity."""
    import torch

    from model.checkpoint import save_checkpoint
    from model.config import ModelConfig
    from model.network import build_model

    torch.manual_seed(0)
    return save_checkpoint(build_model(ModelConfig()), path)


def write_listing(path: Path, count: int) -> None:
    """List the first `count` CUHK03 crops (absolute paths) in an ingest CSV."""
    gallery = DATA_ROOT / "cuhk03_gallery"
    with (gallery / "gallery.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if count > len(rows):
        raise SystemExit(f"only {len(rows)} CUHK03 crops under {gallery}; ask for fewer")
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "id"])
        for row in rows[:count]:
            writer.writerow([str(gallery / row["file_path"]), row["file_path"]])


def tree_cpu_seconds(
    command: list[str], env: dict[str, str]
) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run `command`; return its result and the CPU seconds (user + system) of its process tree."""
    child = subprocess.Popen(
        command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    last_seen: dict[int, float] = {}
    done = threading.Event()

    def sample() -> None:
        root = psutil.Process(child.pid)
        while not done.is_set():
            try:
                members = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                members = []
            for member in members:
                try:
                    times = member.cpu_times()
                    last_seen[member.pid] = times.user + times.system
                except psutil.NoSuchProcess:
                    continue
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = child.communicate()
    done.set()
    sampler.join()
    return subprocess.CompletedProcess(command, child.returncode, stdout, stderr), sum(last_seen.values())


def run_ingest(
    path_kind: str, listing: Path, checkpoint: Path, work: Path, args: argparse.Namespace
) -> tuple[float, float]:
    """Run one ingest command into a new gallery; return its wall time and CPU time in seconds."""
    data_dir = work / f"gallery-{path_kind}-{listing.stem}"
    shutil.rmtree(data_dir, ignore_errors=True)
    command = [
        sys.executable,
        "-m",
        "service.cli",
        "--log-level",
        "WARNING",
        "ingest",
        str(listing),
        "--batch-size",
        str(args.batch_size),
    ]
    if path_kind == "ray":
        command += ["--ray", "local", "--ray-actors", str(args.actors)]
    env = {
        **os.environ,
        "AXM_DATA_DIR": str(data_dir),
        "AXM_CHECKPOINT": str(checkpoint),
        "AXM_INDEX_BACKEND": "faiss",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "RAY_TMPDIR": str(work / "ray"),
    }
    started = time.perf_counter()
    result, cpu = tree_cpu_seconds(command, env)
    wall = time.perf_counter() - started
    if result.returncode != 0 or " 0 failed" not in result.stdout:
        raise SystemExit(
            f"{path_kind} ingest failed ({result.returncode}):\n{result.stdout}\n{result.stderr[-3000:]}"
        )
    return wall, cpu


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    small, large = sorted(args.sizes)
    work = Path(tempfile.mkdtemp(prefix="axm-bench-"))
    try:
        checkpoint = work / "default.safetensors"
        identity = build_checkpoint(checkpoint)
        listings = {}
        for count in (small, large):
            listings[count] = work / f"crops-{count}.csv"
            write_listing(listings[count], count)
        rows = []
        for path_kind in args.paths:
            runs = {
                count: run_ingest(path_kind, listings[count], checkpoint, work, args)
                for count in (small, large)
            }
            walls = {count: wall for count, (wall, _cpu) in runs.items()}
            cpus = {count: cpu for count, (_wall, cpu) in runs.items()}
            rate = (large - small) / (walls[large] - walls[small])
            rows.append(
                {
                    "path": path_kind,
                    "actors": args.actors if path_kind == "ray" else None,
                    "wall_small_s": round(walls[small], 1),
                    "wall_large_s": round(walls[large], 1),
                    "marginal_crops_per_s": round(rate, 2),
                    "startup_s": round(walls[small] - small / rate, 1),
                    "cpu_small_s": round(cpus[small], 1),
                    "cpu_large_s": round(cpus[large], 1),
                    "marginal_cpu_s_per_crop": round((cpus[large] - cpus[small]) / (large - small), 3),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    load = os.getloadavg()
    print(
        f"checkpoint {identity}; sizes {small} and {large}; batch {args.batch_size}; {os.cpu_count()} CPUs "
        f"({platform.processor() or platform.machine()}); load average at the end {load[0]:.1f}"
    )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
