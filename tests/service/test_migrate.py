"""`axm migrate` between a FAISS directory and Milvus Lite, both ways, compared item by item."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from index.faiss_store import FaissGalleryStore
from index.milvus_store import open_milvus_store
from index.store import GalleryStore, NewItem
from service.cli import main
from service.commands.migrate import copy_gallery

pytestmark = pytest.mark.milvus

IDENTITY = "migrate-test-model"
DIM = 24
T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def make_items(count: int, *, seed: int) -> list[NewItem]:
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((count, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return [
        NewItem(
            id=f"cam{i % 2}/track-{i:03d}" if i % 5 else f'odd "id" \\ {i}',
            embedding=vectors[i],
            crop=rng.bytes(200 + i),
            width=64,
            height=128 + i,
            camera_id=f"cam{i % 2}" if i % 7 else None,
            captured_at=T0 + timedelta(seconds=i) if i % 3 else None,
            source=f"upload-{i}.jpg",
            extra={"track": i, "label": ["person", "bag"][i % 2]},
        )
        for i in range(count)
    ]


def assert_same_items(expected: list[NewItem], store: GalleryStore) -> None:
    assert store.count() == len(expected)
    for item in expected:
        stored = store.get(item.id)
        assert (stored.camera_id, stored.captured_at, stored.source) == (
            item.camera_id,
            item.captured_at,
            item.source,
        )
        assert (stored.width, stored.height, stored.extra) == (item.width, item.height, item.extra)
        np.testing.assert_array_equal(store.get_embedding(item.id), item.embedding)
        assert store.read_crop(item.id) == item.crop


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("AXM_DATA_DIR", str(tmp_path / "service-data"))
    monkeypatch.delenv("AXM_MILVUS_URI", raising=False)
    monkeypatch.delenv("AXM_INDEX_BACKEND", raising=False)
    return tmp_path


def test_migrate_faiss_to_milvus_and_back(env: Path, capsys):
    items = make_items(23, seed=1)
    with FaissGalleryStore.open(env / "faiss", model_identity=IDENTITY, dim=DIM) as faiss_store:
        faiss_store.upsert(items)
    lite = str(env / "milvus" / "gallery.db")
    crops = env / "milvus-crops"

    status = main(
        [
            "migrate",
            "--from-dir",
            str(env / "faiss"),
            "--to",
            "milvus",
            "--milvus-uri",
            lite,
            "--crops-dir",
            str(crops),
            "--batch-size",
            "5",
        ]
    )

    assert status == 0, capsys.readouterr()
    assert (
        "read 23 items from faiss: 23 created, 0 updated in milvus; target count 0 -> 23"
        in capsys.readouterr().out
    )
    with open_milvus_store(lite, model_identity=IDENTITY, dim=DIM, crops_dir=crops) as milvus_store:
        assert_same_items(items, milvus_store)

    status = main(
        [
            "migrate",
            "--from",
            "milvus",
            "--milvus-uri",
            lite,
            "--crops-dir",
            str(crops),
            "--to",
            "faiss",
            "--to-dir",
            str(env / "faiss-copy"),
        ]
    )

    assert status == 0, capsys.readouterr()
    with FaissGalleryStore.open(env / "faiss-copy", model_identity=IDENTITY, dim=DIM) as copy:
        assert_same_items(items, copy)


def test_migrate_again_updates_instead_of_duplicating(env: Path):
    items = make_items(8, seed=2)
    lite = str(env / "milvus" / "gallery.db")
    with FaissGalleryStore.open(env / "faiss", model_identity=IDENTITY, dim=DIM) as source:
        source.upsert(items)
        with open_milvus_store(lite, model_identity=IDENTITY, dim=DIM, crops_dir=env / "crops") as target:
            target.upsert(items[:3])

            report = copy_gallery(source, target, batch_size=3)

            assert (report.read, report.created, report.updated) == (8, 5, 3)
            assert (report.target_count_before, report.target_count_after) == (3, 8)
            assert report.complete
            assert_same_items(items, target)


def test_migrate_into_gallery_of_other_model_is_rejected(env: Path, capsys):
    lite = str(env / "milvus" / "gallery.db")
    with FaissGalleryStore.open(env / "faiss", model_identity=IDENTITY, dim=DIM) as source:
        source.upsert(make_items(2, seed=3))
    with open_milvus_store(lite, model_identity="another-model", dim=DIM, crops_dir=env / "crops"):
        pass

    status = main(
        [
            "migrate",
            "--from-dir",
            str(env / "faiss"),
            "--to",
            "milvus",
            "--milvus-uri",
            lite,
            "--crops-dir",
            str(env / "crops"),
        ]
    )

    assert status == 2
    assert "another-model" in capsys.readouterr().err


def test_migrate_rejects_shared_crops_directory(env: Path, capsys):
    with FaissGalleryStore.open(env / "faiss", model_identity=IDENTITY, dim=DIM) as source:
        source.upsert(make_items(1, seed=4))

    status = main(
        [
            "migrate",
            "--from-dir",
            str(env / "faiss"),
            "--to",
            "milvus",
            "--milvus-uri",
            str(env / "m" / "g.db"),
            "--crops-dir",
            str(env / "faiss" / "crops"),
        ]
    )

    assert status == 2
    assert "delete each other's files" in capsys.readouterr().err


def test_migrate_without_milvus_uri_names_the_option(env: Path, capsys):
    status = main(["migrate", "--from-dir", str(env / "faiss"), "--to", "milvus"])

    assert status == 2
    assert "--milvus-uri" in capsys.readouterr().err
