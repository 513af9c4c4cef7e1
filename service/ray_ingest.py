"""Bulk ingest on Ray Data: crops are read by tasks, embedded by model actors and written by the driver.

    axm ingest --ray local crops/            # a Ray runtime started here, on 127.0.0.1 only
    axm ingest --ray ray://head:10001 crops/ # an existing cluster (the project installed on every node)

The pipeline runs the steps of `service.jobs`, so a crop is checked, decoded and embedded as in the
single-process `axm ingest`; this module only distributes them:

1. read (Ray tasks, `cpus_per_read` CPUs each): `jobs.read_source` reads a file and checks its size;
2. embed (a pool of `actors` Ray actors, each with one `Encoder` and `gpus_per_actor` GPUs):
   `jobs._check_item`, `model.preprocess.decode_image`, `Encoder.encode_images`, `jobs._new_item`.
   A batch that fails as a whole is embedded again one crop at a time, so one bad crop fails alone;
3. write (the driver, the one writer the FAISS store allows): `jobs._write` upserts each batch into the
   configured gallery, retried up to `write_retries` times with backoff when the gallery fails.

Batches reach the writer in input order, so when an id repeats, the last file wins as in
`axm ingest`. The report ends with a count check: the gallery must have grown by the items created.

A local runtime binds every Ray process to 127.0.0.1: Ray replaces a loopback node address with the
machine's address unless `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0` is set before `ray` is imported (checked
with Ray 2.60), so this module sets it, and raises if Ray still picked another address. Usage stats
are off, the dashboard is not started and the object store is bounded.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from index.store import (
    GalleryError,
    GalleryStore,
    InvalidConfigError,
    InvalidItemError,
    ModelMismatchError,
    NewItem,
)
from service import jobs
from service.errors import ErrorInfo, ServiceError, describe
from service.settings import Settings

logger = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
LOCAL_ADDRESS = "local"
PROJECT_ROOT = Path(__file__).resolve().parents[1]
# Environment of a local runtime: no usage reports, no token (it listens on loopback only), and node
# addresses kept on loopback. Values already set in the environment win, except the loopback switch.
LOCAL_RUNTIME_DEFAULTS = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
LOOPBACK_SWITCH = ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
# Seconds before the first write retry; each further retry waits twice as long.
WRITE_RETRY_DELAY_S = 1.0
# Gallery errors that another try cannot fix; they end the job.
PERMANENT_WRITE_ERRORS = (ModelMismatchError, InvalidConfigError)


@dataclass(frozen=True)
class RayIngestOptions:
    """How the job runs: where, with how many model actors, and the resources each part requests.

    A read task requests a fraction of a CPU: with whole CPUs, the actors and the read tasks of a small
    machine would wait on each other for ever, without an error.
    """

    address: str = LOCAL_ADDRESS
    actors: int = 1
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0
    cpus_per_read: float = 0.25
    batch_size: int = 32
    write_retries: int = 3
    # Object store of a local runtime, in bytes; crops and embeddings of a few batches fit in far less.
    object_store_bytes: int = 256 * 1024 * 1024

    def __post_init__(self) -> None:
        checks = {
            "actors": self.actors >= 1,
            "cpus_per_actor": self.cpus_per_actor > 0,
            "gpus_per_actor": self.gpus_per_actor >= 0,
            "cpus_per_read": self.cpus_per_read > 0,
            "batch_size": self.batch_size >= 1,
            "write_retries": self.write_retries >= 0,
            "object_store_bytes": self.object_store_bytes >= 80 * 1024 * 1024,
        }
        for name, valid in checks.items():
            if not valid:
                raise ValueError(f"invalid Ray ingest option {name}={getattr(self, name)!r}")


@dataclass
class RayIngestReport:
    """Totals of a Ray ingest, its failures as (file, error) pairs, and the gallery count before and after."""

    created: int = 0
    updated: int = 0
    failures: list[tuple[str, ErrorInfo]] = field(default_factory=list)
    count_before: int = 0
    count_after: int = 0
    seconds: float = 0.0

    @property
    def count_matches(self) -> bool:
        """True when the gallery grew by exactly the items created."""
        return self.count_after == self.count_before + self.created


# --- the runtime ---------------------------------------------------------------------------------


@contextlib.contextmanager
def ray_runtime(
    address: str,
    *,
    num_cpus: float | None = None,
    num_gpus: float | None = None,
    object_store_bytes: int | None = None,
) -> Iterator[None]:
    """Connect to the cluster at `address`, or start a loopback-only runtime for `local`; shut it down after."""
    if address == LOCAL_ADDRESS:
        for name, value in LOCAL_RUNTIME_DEFAULTS.items():
            os.environ.setdefault(name, value)
        os.environ[LOOPBACK_SWITCH[0]] = LOOPBACK_SWITCH[1]
        # Workers start in the driver's environment; this makes the project importable in them.
        paths = [str(PROJECT_ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
        os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))

    import ray

    if address == LOCAL_ADDRESS:
        ray.init(
            address="local",
            _node_ip_address=LOOPBACK,
            include_dashboard=False,
            num_cpus=num_cpus,
            num_gpus=num_gpus,
            object_store_memory=object_store_bytes,
            configure_logging=False,
        )
    else:
        ray.init(address=address, configure_logging=False)
    try:
        node_address = ray.util.get_node_ip_address()
        if address == LOCAL_ADDRESS and node_address != LOOPBACK:
            raise RuntimeError(
                f"the local Ray runtime uses the address {node_address}, not {LOOPBACK}: Ray was imported "
                f"before {LOOPBACK_SWITCH[0]}={LOOPBACK_SWITCH[1]} was set. Run the ingest in a fresh process"
            )
        logger.info(
            "Ray runtime at %s: node %s, resources %s", address, node_address, ray.cluster_resources()
        )
        yield
    finally:
        ray.shutdown()


# --- the steps that run on Ray -------------------------------------------------------------------


@dataclass(frozen=True)
class PipelineRow:
    """One file on its way through the pipeline: its input position, and what the last step made of it.

    Rows travel between Ray workers pickled into one binary column, which Arrow stores as is.
    """

    position: int
    filename: str
    source: jobs.IngestSource | None = None
    item: jobs.IngestItem | None = None
    new_item: NewItem | None = None
    rejection: ErrorInfo | None = None
    model_identity: str | None = None


def pack_rows(rows: Sequence[PipelineRow]) -> dict[str, np.ndarray]:
    """Return the Ray Data batch of `rows`: one column of pickled rows."""
    column = np.empty(len(rows), dtype=object)
    column[:] = [pickle.dumps(row, protocol=pickle.HIGHEST_PROTOCOL) for row in rows]
    return {"row": column}


def unpack_rows(batch: dict[str, np.ndarray]) -> list[PipelineRow]:
    """Return the rows of a Ray Data batch made by `pack_rows`; the job unpickles only its own rows."""
    return [pickle.loads(payload) for payload in batch["row"]]


def read_crops(batch: dict[str, np.ndarray], *, max_file_bytes: int) -> dict[str, np.ndarray]:
    """Read one batch of source files (Ray task); a file that cannot be read becomes a rejection."""
    rows = []
    for row in unpack_rows(batch):
        assert row.source is not None
        try:
            rows.append(
                replace(row, source=None, item=jobs.read_source(row.source, max_file_bytes=max_file_bytes))
            )
        except ServiceError as e:
            rows.append(replace(row, source=None, rejection=describe(e)))
    return pack_rows(rows)


class EmbedCrops:
    """Ray actor: one `Encoder` that checks, decodes and embeds batches of read crops."""

    def __init__(self, settings: Settings, cpus: float) -> None:
        import torch

        from service.engine import load_encoder
        from service.limits import decode_limits

        torch.set_num_threads(max(1, int(cpus)))
        self._encoder = load_encoder(settings)
        self._limits = decode_limits(settings)
        self._max_file_bytes = settings.max_file_bytes

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from model.preprocess import decode_image

        rows = unpack_rows(batch)
        decoded_rows: list[tuple[int, Any, Any]] = []
        for index, row in enumerate(rows):
            if row.item is None:
                continue
            try:
                entry = jobs._check_item(row.position, row.item, max_file_bytes=self._max_file_bytes)
                decoded_rows.append((index, entry, decode_image(row.item.data, self._limits)))
            except jobs.ITEM_ERRORS as e:
                rows[index] = replace(row, item=None, rejection=describe(e))
        for index, entry, decoded, embedding in self._embed(decoded_rows, rows):
            rows[index] = replace(rows[index], item=None, new_item=jobs._new_item(entry, decoded, embedding))
        return pack_rows([replace(row, model_identity=self._encoder.identity) for row in rows])

    def _embed(
        self, decoded_rows: list[tuple[int, Any, Any]], rows: list[PipelineRow]
    ) -> list[tuple[int, Any, Any, np.ndarray]]:
        """Embed the decoded crops; if the batch fails, embed them one by one and reject those that fail."""
        if not decoded_rows:
            return []
        try:
            embeddings = self._encoder.encode_images([decoded.image for _, _, decoded in decoded_rows])
            return [(*entry, embedding) for entry, embedding in zip(decoded_rows, embeddings, strict=True)]
        except Exception as batch_error:
            logger.warning(
                "embedding a batch of %d crops failed (%s); retrying one by one",
                len(decoded_rows),
                batch_error,
            )
        embedded = []
        for index, entry, decoded in decoded_rows:
            try:
                embedded.append((index, entry, decoded, self._encoder.encode_images([decoded.image])[0]))
            except Exception as e:
                logger.exception("embedding %s failed", rows[index].filename)
                failure = ErrorInfo(500, "embed_failed", f"{type(e).__name__}: {e}")
                rows[index] = replace(rows[index], item=None, rejection=failure)
        return embedded


# --- the driver ----------------------------------------------------------------------------------


def write_with_retries(
    store: GalleryStore, items: list[NewItem], filenames: list[str], *, retries: int
) -> list[jobs.IngestOutcome]:
    """Upsert one batch through `jobs._write`, retrying when the gallery fails; return one outcome per item.

    `jobs._write` rejects malformed items one by one. A model mismatch or an invalid store option ends the
    job; any other gallery or I/O error fails the batch, which is tried again after 1, 2, 4... seconds.
    After the last try every item of the batch is a failure.
    """
    entries = [
        jobs._Accepted(
            index=position, item=jobs.IngestItem(data=item.crop, filename=name, id=item.id), id=item.id
        )
        for position, (item, name) in enumerate(zip(items, filenames, strict=True))
    ]
    attempt = 0
    while True:
        try:
            return jobs._write(store, entries, items)
        except InvalidItemError as e:  # `jobs._write` re-raises it for a batch of one item
            return [jobs.rejected_outcome(entries[0].index, entries[0].item, entries[0].id, e)]
        except PERMANENT_WRITE_ERRORS:
            raise
        except (GalleryError, OSError) as e:
            attempt += 1
            if attempt > retries:
                logger.error(
                    "writing a batch of %d items failed %d times; giving up: %s", len(items), attempt, e
                )
                info = ErrorInfo(503, "write_failed", f"the gallery failed {attempt} times: {e}")
                return [
                    jobs.IngestOutcome(entry.index, entry.item.filename, entry.id, "rejected", info)
                    for entry in entries
                ]
            delay = WRITE_RETRY_DELAY_S * 2 ** (attempt - 1)
            logger.warning(
                "writing a batch of %d items failed (%s); try %d of %d in %.0f s",
                len(items),
                e,
                attempt + 1,
                retries + 1,
                delay,
            )
            time.sleep(delay)


def run_ray_ingest(
    settings: Settings,
    store: GalleryStore,
    sources: Sequence[jobs.IngestSource],
    *,
    options: RayIngestOptions,
    model_identity: str,
    progress: Callable[[int], None] | None = None,
) -> RayIngestReport:
    """Ingest `sources` into `store` through a Ray Data pipeline; see the module docstring.

    `model_identity` is the identity the store was opened for; the actors must report the same one.
    `progress(n)` is called after each written batch with its number of files.
    """
    import ray.data

    started = time.perf_counter()
    report = RayIngestReport(count_before=store.count())
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.execution_options.preserve_order = True

    rows = [PipelineRow(position, str(source.path), source=source) for position, source in enumerate(sources)]
    blocks = max(1, -(-len(rows) // options.batch_size))
    dataset = (
        ray.data.from_items(
            [{"row": payload} for payload in pack_rows(rows)["row"]], override_num_blocks=blocks
        )
        .map_batches(
            read_crops,
            batch_size=options.batch_size,
            batch_format="numpy",
            num_cpus=options.cpus_per_read,
            fn_kwargs={"max_file_bytes": settings.max_file_bytes},
        )
        .map_batches(
            EmbedCrops,
            batch_size=options.batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=options.actors),
            num_cpus=options.cpus_per_actor,
            num_gpus=options.gpus_per_actor or None,
            fn_constructor_kwargs={"settings": settings, "cpus": options.cpus_per_actor},
        )
    )
    for batch in dataset.iter_batches(batch_size=options.batch_size, batch_format="numpy"):
        _settle_batch(store, batch, report, model_identity=model_identity, retries=options.write_retries)
        if progress is not None:
            progress(len(batch["row"]))

    flush = getattr(store, "flush", None)  # Milvus seals what the job wrote; FAISS has no such step
    if callable(flush):
        flush()
    report.count_after = store.count()
    report.seconds = time.perf_counter() - started
    logger.info(
        "Ray ingest of %d files in %.1f s: %d created, %d updated, %d failed; gallery %d -> %d items",
        len(sources),
        report.seconds,
        report.created,
        report.updated,
        len(report.failures),
        report.count_before,
        report.count_after,
    )
    return report


def _settle_batch(
    store: GalleryStore,
    batch: dict[str, np.ndarray],
    report: RayIngestReport,
    *,
    model_identity: str,
    retries: int,
) -> None:
    """Write the embedded items of one pipeline batch and record every outcome in `report`."""
    rows = unpack_rows(batch)
    identities = {row.model_identity for row in rows}
    if identities != {model_identity}:
        raise GalleryError(
            f"the Ray actors embedded with model {sorted(map(str, identities))}, but the gallery was opened for "
            f"model {model_identity}; give every node the same checkpoint at the same path"
        )
    embedded = []
    for row in rows:
        if row.new_item is not None:
            embedded.append(row)
        else:
            assert row.rejection is not None
            report.failures.append((row.filename, row.rejection))
    if not embedded:
        return
    items = [row.new_item for row in embedded if row.new_item is not None]
    filenames = [row.filename for row in embedded]
    for outcome, name in zip(
        write_with_retries(store, items, filenames, retries=retries), filenames, strict=True
    ):
        if outcome.status == "created":
            report.created += 1
        elif outcome.status == "updated":
            report.updated += 1
        else:
            assert outcome.error is not None
            report.failures.append((name, outcome.error))
