"""`axm ingest --ray local` on real CUHK03 crops: a loopback-only Ray runtime, every crop found by its own image.

The command runs in a child process, as an operator runs it, while the test watches every socket that
the child and its descendants listen on. Ray gets its own short temporary root, so the processes it
started can be found, and must be gone, after the command exits.
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
CROP_COUNT = 40
LOOPBACK_ADDRESSES = {"127.0.0.1", "::ffff:127.0.0.1", "::1"}
# Starting Ray and one model actor takes 30-60 s on a busy 2-core machine; the limit leaves room.
COMMAND_TIMEOUT_S = 480

RAY_RUN = [pytest.mark.ray, pytest.mark.data, pytest.mark.slow]


@dataclass(frozen=True)
class Listener:
    process: str
    address: str
    port: int


@dataclass(frozen=True)
class CommandRun:
    returncode: int
    stdout: str
    stderr: str
    listeners: frozenset[Listener]


@pytest.fixture
def cuhk03_csv(data_root: Path, tmp_path: Path) -> tuple[Path, list[tuple[str, Path]]]:
    """A CSV naming the first 40 CUHK03 crops in place (absolute paths), with ids and camera ids."""
    gallery = data_root / "cuhk03_gallery"
    with (gallery / "gallery.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))[:CROP_COUNT]
    crops = [(f"cuhk03/{Path(row['file_path']).name}", gallery / row["file_path"]) for row in rows]
    listing = tmp_path / "crops.csv"
    with listing.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "id", "camera_id"])
        for (item_id, path), row in zip(crops, rows, strict=True):
            writer.writerow([str(path), item_id, f"view{int(row['image_index']) % 2}"])
    return listing, crops


@pytest.fixture
def ray_temp_root() -> Iterator[Path]:
    """A short temporary root for Ray: its socket paths must stay under the 107-byte Unix limit."""
    root = Path(tempfile.mkdtemp(prefix="axm-ray-"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


def listening_sockets(process: psutil.Process) -> set[Listener]:
    """Return the TCP and UDP sockets that `process` and its descendants listen on (UDP: bound)."""
    found: set[Listener] = set()
    try:
        family = [process, *process.children(recursive=True)]
    except psutil.NoSuchProcess:
        return found
    for member in family:
        try:
            name = member.name()
            for connection in member.net_connections(kind="inet"):
                if connection.status == psutil.CONN_LISTEN or (
                    connection.status == psutil.CONN_NONE and connection.laddr
                ):
                    found.add(Listener(name, connection.laddr.ip, connection.laddr.port))
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def run_watched(args: list[str], env: dict[str, str]) -> CommandRun:
    """Run `python -m service.cli ARGS`, recording every listening socket of its process tree meanwhile."""
    child = subprocess.Popen(
        [sys.executable, "-m", "service.cli", *args],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    listeners: set[Listener] = set()
    done = threading.Event()

    def watch() -> None:
        tree = psutil.Process(child.pid)
        while not done.is_set():
            listeners.update(listening_sockets(tree))
            time.sleep(0.2)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        stdout, stderr = child.communicate(timeout=COMMAND_TIMEOUT_S)
    finally:
        done.set()
        watcher.join()
        if child.poll() is None:
            child.kill()
    return CommandRun(child.returncode, stdout, stderr, frozenset(listeners))


def processes_using(root: Path) -> list[str]:
    """Return 'name pid' of live processes whose command line mentions `root` (Ray passes its session dir)."""
    found = []
    for process in psutil.process_iter(["pid", "name", "cmdline"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if str(root) in cmdline and process.pid != os.getpid():
            found.append(f"{process.info['name']} {process.info['pid']}")
    return found


def wait_until_gone(root: Path, timeout: float = 30.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while (left := processes_using(root)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return left


@RAY_RUN[0]
@RAY_RUN[1]
@RAY_RUN[2]
def test_ray_ingest_finds_every_crop_at_rank1(small_checkpoint, cuhk03_csv, tmp_path, ray_temp_root):
    from index.faiss_store import FaissGalleryStore
    from model.encoder import Encoder
    from model.preprocess import decode_image
    from service.limits import decode_limits
    from service.settings import Settings

    listing, crops = cuhk03_csv
    data_dir = tmp_path / "gallery"
    env = {
        **os.environ,
        "AXM_DATA_DIR": str(data_dir),
        "AXM_CHECKPOINT": str(small_checkpoint),
        "AXM_INDEX_BACKEND": "faiss",
        "RAY_TMPDIR": str(ray_temp_root),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }

    run = run_watched(["ingest", "--ray", "local", str(listing), "--batch-size", "8"], env)

    assert run.returncode == 0, run.stderr[-4000:]
    assert f"{CROP_COUNT} created, 0 updated, 0 failed" in run.stdout
    assert f"gallery count 0 -> {CROP_COUNT}" in run.stdout
    ray_listeners = {listener for listener in run.listeners if listener.process in {"raylet", "gcs_server"}}
    assert ray_listeners, (
        f"no raylet or gcs_server socket was seen; watched: {sorted(map(str, run.listeners))}"
    )
    exposed = sorted(
        str(listener) for listener in run.listeners if listener.address not in LOOPBACK_ADDRESSES
    )
    assert exposed == []
    assert wait_until_gone(ray_temp_root) == []

    settings = Settings(data_dir=data_dir, checkpoint=small_checkpoint)
    encoder = Encoder.from_checkpoint(small_checkpoint, batch_size=8)
    limits = decode_limits(settings)
    images = [decode_image(path.read_bytes(), limits).image for _, path in crops]
    queries = encoder.encode_images(images)
    with FaissGalleryStore.open(
        data_dir, model_identity=encoder.identity, dim=encoder.dim, read_only=True
    ) as store:
        assert store.count() == CROP_COUNT
        results = store.search(queries, top_k=1)
    for (item_id, _path), hits in zip(crops, results, strict=True):
        assert hits[0].item.id == item_id
        # The same crop through the same weights on the same CPU build: only float rounding differs.
        assert hits[0].score == pytest.approx(1.0, abs=1e-4)


@RAY_RUN[0]
@RAY_RUN[1]
@RAY_RUN[2]
@pytest.mark.milvus
def test_ray_ingest_writes_to_milvus(small_checkpoint, cuhk03_csv, tmp_path, ray_temp_root):
    from index.milvus_store import open_milvus_store
    from model.checkpoint import read_checkpoint_info

    listing, crops = cuhk03_csv
    lite = tmp_path / "milvus" / "gallery.db"
    env = {
        **os.environ,
        "AXM_DATA_DIR": str(tmp_path / "service-data"),
        "AXM_CHECKPOINT": str(small_checkpoint),
        "AXM_INDEX_BACKEND": "milvus",
        "AXM_MILVUS_URI": str(lite),
        "RAY_TMPDIR": str(ray_temp_root),
    }

    run = run_watched(["ingest", "--ray", "local", str(listing), "--batch-size", "16"], env)

    assert run.returncode == 0, run.stderr[-4000:]
    assert f"{CROP_COUNT} created, 0 updated, 0 failed" in run.stdout
    assert wait_until_gone(ray_temp_root) == []
    info = read_checkpoint_info(small_checkpoint)
    with open_milvus_store(
        str(lite),
        model_identity=info.identity,
        dim=info.config.head.embed_dim,
        crops_dir=tmp_path / "service-data" / "crops",
    ) as store:
        assert store.count() == CROP_COUNT
        for item_id, path in crops[:5]:
            assert store.read_crop(item_id) == path.read_bytes()
            hits = store.search(store.get_embedding(item_id)[None, :], top_k=1)[0]
            assert hits[0].item.id == item_id


def unit_vector(dim: int, axis: int) -> np.ndarray:
    vector = np.zeros(dim, dtype=np.float32)
    vector[axis] = 1.0
    return vector


@pytest.fixture
def lite_store(tmp_path: Path):
    from index.milvus_store import open_milvus_store

    store = open_milvus_store(
        str(tmp_path / "milvus" / "g.db"), model_identity="m", dim=4, crops_dir=tmp_path / "crops"
    )
    yield store
    store.close()


@pytest.mark.milvus
def test_write_batch_reports_each_item(lite_store):
    from index.store import NewItem
    from service.ray_ingest import write_with_retries

    good = NewItem(id="good", embedding=unit_vector(4, 0), crop=b"a", width=2, height=2)
    wrong_dim = NewItem(id="wrong-dim", embedding=unit_vector(8, 0), crop=b"b", width=2, height=2)

    outcomes = write_with_retries(lite_store, [good, wrong_dim], ["good.png", "wrong.png"], retries=0)

    assert [(o.id, o.status) for o in outcomes] == [("good", "created"), ("wrong-dim", "rejected")]
    assert outcomes[1].error.code == "invalid_item"
    assert lite_store.count() == 1


@pytest.mark.milvus
def test_write_batch_of_one_invalid_item_is_rejected(lite_store):
    from index.store import NewItem
    from service.ray_ingest import write_with_retries

    wrong_dim = NewItem(id="wrong-dim", embedding=unit_vector(8, 0), crop=b"b", width=2, height=2)

    outcomes = write_with_retries(lite_store, [wrong_dim], ["wrong.png"], retries=0)

    assert [(o.id, o.status) for o in outcomes] == [("wrong-dim", "rejected")]


@pytest.mark.milvus
def test_write_batch_gives_up_after_retries(lite_store, monkeypatch, caplog):
    from index.store import NewItem
    from service import ray_ingest

    monkeypatch.setattr(ray_ingest, "WRITE_RETRY_DELAY_S", 0.01)
    item = NewItem(id="late", embedding=unit_vector(4, 1), crop=b"c", width=2, height=2)
    lite_store.close()  # every upsert now fails with GalleryError

    outcomes = ray_ingest.write_with_retries(lite_store, [item], ["late.png"], retries=2)

    assert [(o.id, o.status) for o in outcomes] == [("late", "rejected")]
    assert outcomes[0].error.code == "write_failed"
    assert "failed 3 times" in outcomes[0].error.detail
    assert sum("try" in record.getMessage() for record in caplog.records) == 2


def test_options_reject_invalid_resources():
    from service.ray_ingest import RayIngestOptions

    with pytest.raises(ValueError, match="cpus_per_read"):
        RayIngestOptions(cpus_per_read=0)
    with pytest.raises(ValueError, match="actors"):
        RayIngestOptions(actors=0)
