"""The service under benchmark: an `axm serve` process on 127.0.0.1, its memory, and its /metrics.

`start_service` launches `python -m service.cli serve` (uvicorn, one worker) with a data directory and
a checkpoint of the caller's choosing. It times two moments from the process start: the first 200 on
/health (HTTP is up) and the first 200 on /ready (model loaded, gallery open, warm-up inference done).
"""

from __future__ import annotations

import bisect
import math
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
from prometheus_client.parser import text_string_to_metric_families

REPO_ROOT = Path(__file__).resolve().parents[1]
# Polling interval of /health and /ready while the service starts, in seconds; it bounds the
# resolution of the cold-start figures.
POLL_INTERVAL_S = 0.05

SampleKey = tuple[str, frozenset[tuple[str, str]]]


class ServiceStartError(RuntimeError):
    """Raised when the service process exits or is not ready before the timeout."""


@dataclass(frozen=True)
class StartTiming:
    """Seconds from the process start to the first 200 on /health and on /ready."""

    health_s: float
    ready_s: float


@dataclass
class ServiceProcess:
    """One running `axm serve` process and the log file it writes."""

    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def rss_bytes(self) -> int:
        """Resident memory of the service process and any children it started, in bytes."""
        parent = psutil.Process(self.process.pid)
        return sum(process.memory_info().rss for process in [parent, *parent.children(recursive=True)])

    def peak_rss_bytes(self) -> int | None:
        """Highest resident memory of the service process so far (VmHWM), in bytes; None off Linux."""
        status = Path(f"/proc/{self.process.pid}/status")
        if not status.is_file():
            return None
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        return None

    def stop(self) -> None:
        """Send SIGTERM and wait up to 60 s for a clean shutdown, then SIGKILL."""
        if self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


def free_port() -> int:
    """Return a TCP port that is free on 127.0.0.1 now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def service_environment(checkpoint: Path, data_dir: Path, extra: dict[str, str]) -> dict[str, str]:
    """Return the current environment without its AXM_ settings, plus offline flags, the paths and `extra`."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("AXM_")}
    env.update(
        {
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "AXM_CHECKPOINT": str(checkpoint),
            "AXM_DATA_DIR": str(data_dir),
            **extra,
        }
    )
    return env


def start_service(
    *,
    checkpoint: Path,
    data_dir: Path,
    log_path: Path,
    extra_env: dict[str, str] | None = None,
    timeout_s: float = 600.0,
) -> tuple[ServiceProcess, StartTiming]:
    """Start `axm serve` on a free loopback port and return once /ready returns 200."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "service.cli",
        "--log-level",
        "WARNING",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    env = service_environment(checkpoint, data_dir, extra_env or {})
    with log_path.open("wb") as log:
        started = time.perf_counter()
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    service = ServiceProcess(url=f"http://127.0.0.1:{port}", process=process, log_path=log_path)
    try:
        timing = _wait_until_ready(service, started, timeout_s)
    except BaseException:
        service.stop()
        raise
    return service, timing


def _wait_until_ready(service: ServiceProcess, started: float, timeout_s: float) -> StartTiming:
    health_s: float | None = None
    deadline = started + timeout_s
    with httpx.Client(base_url=service.url, timeout=5.0) as client:
        while time.perf_counter() < deadline:
            if service.process.poll() is not None:
                raise ServiceStartError(
                    f"axm serve exited with status {service.process.returncode} before it was ready:\n"
                    f"{service.log_tail()}"
                )
            try:
                if health_s is None and client.get("/health").status_code == 200:
                    health_s = time.perf_counter() - started
                if health_s is not None:
                    response = client.get("/ready")
                    if response.status_code == 200:
                        return StartTiming(health_s=health_s, ready_s=time.perf_counter() - started)
                    if "failed to load" in response.text:
                        raise ServiceStartError(f"the service failed to load: {response.text}")
            except httpx.TransportError:
                pass
            time.sleep(POLL_INTERVAL_S)
    raise ServiceStartError(f"axm serve was not ready {timeout_s:.0f} s after start:\n{service.log_tail()}")


# --- /metrics ----------------------------------------------------------------------------------------


def scrape_metrics(client: httpx.Client) -> dict[SampleKey, float]:
    """Read every sample of GET /metrics, keyed by sample name and labels."""
    response = client.get("/metrics")
    response.raise_for_status()
    samples: dict[SampleKey, float] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


@dataclass(frozen=True)
class HistogramDelta:
    """Observations a Prometheus histogram gained between two scrapes.

    `buckets` contains (upper bound in seconds, cumulative count) pairs in increasing order, +Inf last.
    """

    count: float
    total: float
    buckets: list[tuple[float, float]]

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else math.nan

    def plus(self, other: HistogramDelta) -> HistogramDelta:
        """Return the observations of both deltas; a delta without buckets adds only its count and sum."""
        if not self.buckets or not other.buckets:
            buckets = self.buckets or other.buckets
        elif [bound for bound, _ in self.buckets] != [bound for bound, _ in other.buckets]:
            raise ValueError("histogram deltas with different bucket bounds cannot be added")
        else:
            buckets = [(bound, a + b) for (bound, a), (_, b) in zip(self.buckets, other.buckets, strict=True)]
        return HistogramDelta(self.count + other.count, self.total + other.total, buckets)

    def quantile(self, q: float) -> float:
        """Estimate a quantile by linear interpolation inside its bucket, as Prometheus's histogram_quantile."""
        if not self.count:
            return math.nan
        rank = q * self.count
        bounds = [bound for bound, _ in self.buckets]
        counts = [count for _, count in self.buckets]
        position = bisect.bisect_left(counts, rank)
        if position >= len(bounds) - 1:  # the +Inf bucket: return the largest finite bound
            return bounds[-2]
        lower_bound = bounds[position - 1] if position > 0 else 0.0
        lower_count = counts[position - 1] if position > 0 else 0.0
        in_bucket = counts[position] - lower_count
        fraction = (rank - lower_count) / in_bucket if in_bucket else 0.0
        return lower_bound + (bounds[position] - lower_bound) * fraction


def histogram_delta(
    before: dict[SampleKey, float],
    after: dict[SampleKey, float],
    name: str,
    labels: dict[str, str] | None = None,
) -> HistogramDelta:
    """Return what histogram `name` with `labels` gained from `before` to `after`."""
    expected_labels = frozenset((labels or {}).items())

    def gained(sample: str, extra: frozenset[tuple[str, str]] = frozenset()) -> float:
        key = (sample, expected_labels | extra)
        return after.get(key, 0.0) - before.get(key, 0.0)

    # Keep each `le` label as written, so bucket keys match the scrape exactly.
    labels_by_bound = {
        float(dict(key_labels)["le"]): dict(key_labels)["le"]
        for sample, key_labels in after
        if sample == f"{name}_bucket" and expected_labels <= key_labels
    }
    buckets = [
        (bound, gained(f"{name}_bucket", frozenset({("le", labels_by_bound[bound])})))
        for bound in sorted(labels_by_bound)
    ]
    return HistogramDelta(count=gained(f"{name}_count"), total=gained(f"{name}_sum"), buckets=buckets)
