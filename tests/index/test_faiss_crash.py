"""A writer process killed with SIGKILL mid-batch loses nothing it acknowledged; the lock spans processes."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from faiss_writer_process import (
    DIM,
    MODEL_IDENTITY,
    batch_items,
    deleted_id,
    embedding_for,
    item_for,
    new_ids,
    replaced_ids,
)

from index.faiss_store import FaissGalleryStore
from index.store import ItemNotFoundError, StoreLockedError

REPO_ROOT = Path(__file__).resolve().parents[2]
CHILD = Path(__file__).resolve().parent / "faiss_writer_process.py"
# Batches acknowledged before the kill; batch 3 saved index.faiss, so the file is stale by then.
KILL_AFTER_BATCH = 7
CHILD_TIMEOUT_S = 120


def start_child(mode: str, path: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen(
        [sys.executable, str(CHILD), mode, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO_ROOT,
    )


def read_line(child: subprocess.Popen[str], deadline: float) -> str:
    line = child.stdout.readline()
    if not line:
        raise AssertionError(f"child exited early (code {child.wait()}): {child.stderr.read()[-2000:]}")
    if time.monotonic() > deadline:
        raise AssertionError("child did not acknowledge writes in time")
    return line.strip()


def run_and_kill_writer(path: Path) -> tuple[int, set[str]]:
    """Run the writer until batch KILL_AFTER_BATCH is acknowledged, SIGKILL it; return (last batch, deleted ids)."""
    child = start_child("write", path)
    deadline = time.monotonic() + CHILD_TIMEOUT_S
    last_batch = -1
    deleted: set[str] = set()
    try:
        while last_batch < KILL_AFTER_BATCH:
            kind, _, value = read_line(child, deadline).partition(" ")[2].partition(" ")
            if kind == "UPSERT":
                last_batch = int(value)
            else:
                deleted.add(value)
        time.sleep(0.005)  # let the child get into the next upsert
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdout.close()
        child.stderr.close()
        child.stdin.close()
    assert child.returncode == -signal.SIGKILL
    return last_batch, deleted


def expected_versions(last_batch: int, deleted: set[str]) -> dict[str, int]:
    """Return id -> version of every acknowledged item that must be present after the kill."""
    versions: dict[str, int] = {}
    for batch in range(last_batch + 1):
        for item_id in new_ids(batch) + replaced_ids(batch):
            versions[item_id] = batch
    return {item_id: version for item_id, version in versions.items() if item_id not in deleted}


def test_sigkill_loses_no_acknowledged_write(tmp_path):
    assert deleted_id(KILL_AFTER_BATCH) is None  # no unacknowledged delete can follow the last upsert
    path = tmp_path / "gallery"
    last_batch, deleted = run_and_kill_writer(path)
    in_flight = last_batch + 1

    store = FaissGalleryStore.open(path, model_identity=MODEL_IDENTITY, dim=DIM)
    try:
        report = store.last_open_report
        assert report.previous_close_clean is False
        assert report.index_source == "caught_up"
        assert any("applied the later writes" in repair for repair in report.repairs)

        expected = expected_versions(last_batch, deleted)
        in_flight_new = set(new_ids(in_flight))
        present_in_flight = {item_id for item_id in in_flight_new if _exists(store, item_id)}
        assert present_in_flight in (set(), in_flight_new), "a batch was stored in part"
        batch_committed = bool(present_in_flight)

        for item_id, acknowledged in expected.items():
            stored = store.get(item_id)
            version = stored.extra["version"]
            if batch_committed and item_id in replaced_ids(in_flight):
                assert version == in_flight
            else:
                assert version == acknowledged
            _assert_item_intact(store, item_id, version)
        for item_id in deleted:
            assert not _exists(store, item_id)
        for item_id in present_in_flight:
            _assert_item_intact(store, item_id, in_flight)

        assert store.count() == len(expected) + len(present_in_flight)
        probe_ids = sorted(expected)[::7]
        versions = [store.get(item_id).extra["version"] for item_id in probe_ids]
        queries = np.stack(
            [embedding_for(item_id, version) for item_id, version in zip(probe_ids, versions, strict=True)]
        )
        for item_id, hits in zip(probe_ids, store.search(queries, top_k=3), strict=True):
            assert hits[0].item.id == item_id
    finally:
        store.close()

    clean = FaissGalleryStore.open(path, model_identity=MODEL_IDENTITY, dim=DIM)
    assert clean.last_open_report.previous_close_clean is True
    assert clean.last_open_report.repairs == ()
    clean.close()


def _exists(store: FaissGalleryStore, item_id: str) -> bool:
    try:
        store.get(item_id)
    except ItemNotFoundError:
        return False
    return True


def _assert_item_intact(store: FaissGalleryStore, item_id: str, version: int) -> None:
    written = item_for(item_id, version)
    stored = store.get(item_id)
    assert stored.camera_id == written.camera_id
    assert stored.captured_at == written.captured_at
    assert stored.source == written.source
    assert stored.sha256 == hashlib.sha256(written.crop).hexdigest()
    assert store.read_crop(item_id) == written.crop
    np.testing.assert_array_equal(store.get_embedding(item_id), written.embedding)


def test_batch_items_are_deterministic():
    first = batch_items(4)
    second = batch_items(4)

    assert [item.id for item in first] == [item.id for item in second]
    for left, right in zip(first, second, strict=True):
        np.testing.assert_array_equal(left.embedding, right.embedding)
        assert left.crop == right.crop


def test_writer_lock_spans_processes(tmp_path):
    path = tmp_path / "gallery"
    child = start_child("hold", path)
    try:
        line = read_line(child, time.monotonic() + CHILD_TIMEOUT_S)
        assert line.startswith("READY ")
        holder = line.split()[1]

        with pytest.raises(StoreLockedError, match=f"pid {holder}"):
            FaissGalleryStore.open(path, model_identity=MODEL_IDENTITY, dim=DIM)
        reader = FaissGalleryStore.open(path, model_identity=MODEL_IDENTITY, dim=DIM, read_only=True)
        assert reader.count() == 0
        reader.close()

        child.stdin.write("done\n")
        child.stdin.flush()
        assert child.wait(timeout=30) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        for stream in (child.stdin, child.stdout, child.stderr):
            stream.close()

    FaissGalleryStore.open(path, model_identity=MODEL_IDENTITY, dim=DIM).close()
