"""FAISS store files: the data directory layout, index.faiss repair, crash leftovers, locks, read-only mode.

A crash at a quiet moment is simulated by copying the data directory of an open store. Every write
is durable when it returns, so the copy contains exactly what a killed writer would leave behind.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import sqlite3
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import DIM, MODEL_IDENTITY
from index_helpers import make_items, unit_vectors

from index.faiss_store import FaissGalleryStore
from index.store import StoreCorruptError, StoreLockedError, StoreNotFoundError


def open_faiss(path: Path, **options) -> FaissGalleryStore:
    return FaissGalleryStore.open(path, model_identity=MODEL_IDENTITY, dim=DIM, **options)


def crash_copy(store: FaissGalleryStore, destination: Path) -> Path:
    """Copy an open store's directory, as a crash of its writer at this moment would leave it."""
    shutil.copytree(store.directory, destination)
    return destination


def search_ids(store: FaissGalleryStore, queries: np.ndarray) -> list[list[str]]:
    return [[hit.item.id for hit in hits] for hits in store.search(queries, top_k=5)]


def test_data_directory_layout(tmp_path):
    store = open_faiss(tmp_path / "g")
    items = make_items(unit_vectors(3, DIM, seed=1))
    store.upsert(items)
    store.close()

    names = {path.name for path in (tmp_path / "g").iterdir()}
    assert {"manifest.json", "gallery.sqlite3", "index.faiss", "crops", "writer.lock"} <= names
    for item in items:
        digest = hashlib.sha256(item.crop).hexdigest()
        assert (tmp_path / "g" / "crops" / digest[:2] / digest).read_bytes() == item.crop
    manifest = json.loads((tmp_path / "g" / "manifest.json").read_text())
    assert manifest["model_identity"] == MODEL_IDENTITY
    assert manifest["dim"] == DIM
    assert manifest["count"] == 3
    assert manifest["index_spec"] == "Flat"
    assert manifest["backend"] == "faiss"
    assert manifest["backend_version"]
    assert manifest["closed_cleanly"] is True
    assert manifest["index_file"]["generation"] == manifest["generation"]
    index_bytes = (tmp_path / "g" / "index.faiss").read_bytes()
    assert manifest["index_file"]["sha256"] == hashlib.sha256(index_bytes).hexdigest()


def test_sqlite_runs_in_wal_mode_with_full_sync(tmp_path):
    store = open_faiss(tmp_path / "g")

    connection = store._db.writer
    assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert connection.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    store.close()


def test_unreferenced_crop_is_removed(tmp_path):
    store = open_faiss(tmp_path / "g")
    first, second = make_items(unit_vectors(2, DIM, seed=2))
    shared = make_items(unit_vectors(1, DIM, seed=3), prefix="shared")[0]
    shared = replace(shared, crop=first.crop)
    store.upsert([first, second, shared])
    crop_path = store._crops.path_for(hashlib.sha256(first.crop).hexdigest())
    second_path = store._crops.path_for(hashlib.sha256(second.crop).hexdigest())

    store.delete([first.id])
    assert crop_path.exists()  # still referenced by `shared`
    store.delete([shared.id])
    store.upsert([replace(second, crop=b"replacement")])

    assert not crop_path.exists()
    assert not second_path.exists()
    store.close()


def test_deleted_index_file_is_rebuilt(tmp_path, caplog):
    store = open_faiss(tmp_path / "g")
    items = make_items(unit_vectors(50, DIM, seed=4))
    store.upsert(items)
    queries = unit_vectors(3, DIM, seed=5)
    expected = search_ids(store, queries)
    store.close()
    (tmp_path / "g" / "index.faiss").unlink()

    with caplog.at_level(logging.WARNING, logger="index.faiss_store"):
        reopened = open_faiss(tmp_path / "g")

    report = reopened.last_open_report
    assert report.index_source == "rebuilt"
    assert any("index.faiss is missing" in repair and "rebuilt" in repair for repair in report.repairs)
    assert "index.faiss is missing" in caplog.text
    assert search_ids(reopened, queries) == expected
    assert (tmp_path / "g" / "index.faiss").exists()
    reopened.close()
    assert open_faiss(tmp_path / "g").last_open_report.index_source == "file"


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda data: data[: len(data) // 2], "bytes"),
        (lambda data: b"not a faiss index" + data[17:], "sha256"),
        (lambda data: b"", "bytes"),
    ],
)
def test_corrupt_index_file_is_rebuilt(tmp_path, damage, reason):
    store = open_faiss(tmp_path / "g")
    store.upsert(make_items(unit_vectors(40, DIM, seed=6)))
    queries = unit_vectors(3, DIM, seed=7)
    expected = search_ids(store, queries)
    store.close()
    path = tmp_path / "g" / "index.faiss"
    path.write_bytes(damage(path.read_bytes()))

    reopened = open_faiss(tmp_path / "g")

    assert reopened.last_open_report.index_source == "rebuilt"
    assert reason in " ".join(reopened.last_open_report.repairs)
    assert search_ids(reopened, queries) == expected
    reopened.close()


def test_unreadable_index_file_with_matching_record_is_rebuilt(tmp_path):
    store = open_faiss(tmp_path / "g")
    store.upsert(make_items(unit_vectors(10, DIM, seed=8)))
    store.close()
    manifest_path = tmp_path / "g" / "manifest.json"
    garbage = b"\x00" * 64
    (tmp_path / "g" / "index.faiss").write_bytes(garbage)
    manifest = json.loads(manifest_path.read_text())
    manifest["index_file"].update(size_bytes=64, sha256=hashlib.sha256(garbage).hexdigest())
    manifest_path.write_text(json.dumps(manifest))

    reopened = open_faiss(tmp_path / "g")

    assert reopened.last_open_report.index_source == "rebuilt"
    assert "cannot read index.faiss" in " ".join(reopened.last_open_report.repairs)
    assert reopened.count() == 10
    reopened.close()


def test_stale_index_file_is_caught_up(tmp_path):
    store = open_faiss(tmp_path / "g")
    items = make_items(unit_vectors(60, DIM, seed=9))
    store.upsert(items[:40])
    store.checkpoint()
    store.upsert(items[40:])
    store.delete([item.id for item in items[:5]])
    queries = unit_vectors(4, DIM, seed=10)
    expected = search_ids(store, queries)
    copy = crash_copy(store, tmp_path / "crashed")
    store.close()

    recovered = open_faiss(copy)

    report = recovered.last_open_report
    assert report.previous_close_clean is False
    assert report.index_source == "caught_up"
    assert any("20 added, 5 removed" in repair for repair in report.repairs)
    assert recovered.count() == 55
    assert search_ids(recovered, queries) == expected
    recovered.close()


def test_crash_leftovers_are_removed(tmp_path):
    store = open_faiss(tmp_path / "g")
    items = make_items(unit_vectors(5, DIM, seed=11))
    store.upsert(items)
    copy = crash_copy(store, tmp_path / "crashed")
    store.close()
    orphan = b"crop written before a commit that never happened"
    orphan_digest = hashlib.sha256(orphan).hexdigest()
    (copy / "crops" / orphan_digest[:2]).mkdir(exist_ok=True)
    (copy / "crops" / orphan_digest[:2] / orphan_digest).write_bytes(orphan)
    (copy / "crops" / orphan_digest[:2] / f".tmp-{orphan_digest}-0a1b2c").write_bytes(orphan[:10])
    (copy / ".tmp-index.faiss-0a1b2c").write_bytes(b"partial")

    recovered = open_faiss(copy)

    repairs = " ".join(recovered.last_open_report.repairs)
    assert "removed 2 temporary files" in repairs
    assert "removed 1 crop files that no item references" in repairs
    assert not (copy / "crops" / orphan_digest[:2] / orphan_digest).exists()
    assert not (copy / ".tmp-index.faiss-0a1b2c").exists()
    for item in items:
        assert recovered.read_crop(item.id) == item.crop
    recovered.close()


def test_missing_crop_is_reported(tmp_path):
    store = open_faiss(tmp_path / "g")
    items = make_items(unit_vectors(3, DIM, seed=12))
    store.upsert(items)
    copy = crash_copy(store, tmp_path / "crashed")
    store.close()
    digest = hashlib.sha256(items[1].crop).hexdigest()
    (copy / "crops" / digest[:2] / digest).unlink()

    recovered = open_faiss(copy)

    assert recovered.last_open_report.missing_crop_ids == (items[1].id,)
    with pytest.raises(StoreCorruptError, match="re-ingest"):
        recovered.read_crop(items[1].id)
    assert recovered.search(items[1].embedding[None, :], top_k=1)[0][0].item.id == items[1].id
    recovered.close()


def test_damaged_manifest_is_rewritten(tmp_path):
    store = open_faiss(tmp_path / "g")
    store.upsert(make_items(unit_vectors(8, DIM, seed=13)))
    store.close()
    (tmp_path / "g" / "manifest.json").write_text("{ truncated")

    reopened = open_faiss(tmp_path / "g")

    assert "manifest.json is damaged" in " ".join(reopened.last_open_report.repairs)
    assert reopened.count() == 8
    reopened.close()
    assert json.loads((tmp_path / "g" / "manifest.json").read_text())["count"] == 8


def test_missing_database_is_corrupt(tmp_path):
    store = open_faiss(tmp_path / "g")
    store.upsert(make_items(unit_vectors(2, DIM, seed=14)))
    store.close()
    (tmp_path / "g" / "gallery.sqlite3").unlink()

    with pytest.raises(StoreCorruptError, match=r"gallery\.sqlite3 is missing"):
        open_faiss(tmp_path / "g")


def test_garbage_database_is_corrupt(tmp_path):
    (tmp_path / "g").mkdir()
    (tmp_path / "g" / "gallery.sqlite3").write_bytes(b"this is not a database" * 100)

    with pytest.raises(StoreCorruptError, match="cannot be read"):
        open_faiss(tmp_path / "g")


def test_unfinished_reindex_is_discarded(tmp_path):
    store = open_faiss(tmp_path / "g")
    items = make_items(unit_vectors(6, DIM, seed=15))
    store.upsert(items)
    store.close()
    connection = sqlite3.connect(tmp_path / "g" / "gallery.sqlite3")
    connection.execute("CREATE TABLE embeddings_next (label INTEGER PRIMARY KEY, vector BLOB NOT NULL)")
    connection.execute(
        "INSERT INTO meta (key, value) VALUES ('reindex_target', ?)",
        (json.dumps({"model_identity": "b", "dim": 8}),),
    )
    connection.commit()
    connection.close()

    reopened = open_faiss(tmp_path / "g")

    assert "discarded an unfinished reindex to model b (8-d)" in " ".join(reopened.last_open_report.repairs)
    assert reopened.manifest.model_identity == MODEL_IDENTITY
    assert reopened.search(items[0].embedding[None, :], top_k=1)[0][0].item.id == items[0].id
    reopened.close()


def test_second_writer_is_locked_out(tmp_path):
    store = open_faiss(tmp_path / "g")

    with pytest.raises(StoreLockedError, match="read_only=True"):
        open_faiss(tmp_path / "g")
    store.close()
    open_faiss(tmp_path / "g").close()  # the lock is released on close


def test_read_only_store_sits_beside_writer(tmp_path):
    writer = open_faiss(tmp_path / "g")
    items = make_items(unit_vectors(30, DIM, seed=16))
    writer.upsert(items[:20])
    reader = open_faiss(tmp_path / "g", read_only=True)
    writer.upsert(items[20:])
    writer.delete([items[0].id])

    assert reader.count() == 29  # counts and metadata come from SQLite as committed
    assert items[25].id not in {
        hit.item.id for hit in reader.search(items[25].embedding[None, :], top_k=3)[0]
    }
    reader.refresh()
    assert reader.search(items[25].embedding[None, :], top_k=1)[0][0].item.id == items[25].id
    assert items[0].id not in {hit.item.id for hit in reader.search(items[0].embedding[None, :], top_k=30)[0]}
    with pytest.raises(Exception, match="read-only"):
        reader.upsert(items[:1])
    reader.close()
    writer.close()


def test_missing_gallery_is_not_created_when_forbidden(tmp_path):
    with pytest.raises(StoreNotFoundError, match="no gallery at"):
        open_faiss(tmp_path / "absent", create=False)
    with pytest.raises(StoreNotFoundError):
        open_faiss(tmp_path / "absent", read_only=True)
    assert not (tmp_path / "absent").exists()
