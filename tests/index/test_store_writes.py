"""Writes on every backend: upsert replaces, deletes never come back, batches are all or nothing."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from datetime import datetime

import numpy as np
import pytest
from conftest import DIM
from index_helpers import all_ids, crop_bytes, make_items, unit_vectors

from index.store import MAX_ID_LENGTH, InvalidItemError, ItemNotFoundError, NewItem, WriteResult


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_upsert_reports_created_then_updated(store_factory):
    store = store_factory()
    items = make_items(unit_vectors(3, DIM, seed=1))

    first = store.upsert(items)
    second = store.upsert(items[:1])

    assert first == [WriteResult(id=item.id, status="created") for item in items]
    assert second == [WriteResult(id=items[0].id, status="updated")]


def test_same_id_twice_leaves_one_item(store_factory):
    store = store_factory()
    vectors = unit_vectors(2, DIM, seed=2)
    original = make_items(vectors[:1])[0]
    changed = replace(
        original, embedding=vectors[1], camera_id="cam9", extra={"version": 2}, crop=b"new bytes"
    )

    store.upsert([original])
    store.upsert([changed])

    assert store.count() == 1
    assert all_ids(store) == [original.id]
    stored = store.get(original.id)
    assert stored.camera_id == "cam9"
    assert stored.extra == {"version": 2}
    np.testing.assert_array_equal(store.get_embedding(original.id), vectors[1])
    assert store.read_crop(original.id) == b"new bytes"
    hits = store.search(vectors[:1], top_k=5)[0]
    assert [hit.item.id for hit in hits] == [original.id]
    assert hits[0].score == pytest.approx(float(vectors[0] @ vectors[1]), abs=1e-5)


def test_replace_keeps_created_at(store_factory):
    store = store_factory()
    item = make_items(unit_vectors(1, DIM, seed=3))[0]
    store.upsert([item])
    before = store.get(item.id)

    store.upsert([replace(item, source="re-ingested")])
    after = store.get(item.id)

    assert after.created_at == before.created_at
    assert after.updated_at >= before.updated_at
    assert after.source == "re-ingested"
    assert after.created_at.tzinfo is not None and after.created_at.utcoffset().total_seconds() == 0


def test_repeated_id_in_one_batch_stores_the_last(store_factory):
    store = store_factory()
    vectors = unit_vectors(2, DIM, seed=4)
    first = make_items(vectors[:1])[0]
    last = replace(first, embedding=vectors[1], extra={"which": "last"})

    results = store.upsert([first, last])

    assert [result.status for result in results] == ["created", "updated"]
    assert store.count() == 1
    assert store.get(first.id).extra == {"which": "last"}
    np.testing.assert_array_equal(store.get_embedding(first.id), vectors[1])


def test_invalid_item_rejects_whole_batch(store_factory):
    store = store_factory()
    vectors = unit_vectors(4, DIM, seed=5)
    items = make_items(vectors)
    store.upsert(items[:1])
    bad = replace(items[3], embedding=vectors[3] * 3)

    with pytest.raises(InvalidItemError, match=r"item 2 .*norm"):
        store.upsert([replace(items[0], extra={"changed": True}), items[1], bad])

    assert store.count() == 1
    assert store.get(items[0].id).extra == {"number": 0}
    with pytest.raises(ItemNotFoundError):
        store.get(items[1].id)


def test_delete_then_readd_keeps_survivors_findable(store_factory):
    store = store_factory()
    vectors = unit_vectors(300, DIM, seed=6)
    items = make_items(vectors)
    store.upsert(items)
    deleted = [item.id for item in items[::3]]

    assert sorted(store.delete(deleted)) == sorted(deleted)
    readded = [
        replace(item, embedding=unit_vectors(1, DIM, seed=100 + n)[0]) for n, item in enumerate(items[:30:3])
    ]
    store.upsert(readded)

    deleted_for_good = set(deleted) - {item.id for item in readded}
    live = [*(item for item in items if item.id not in set(deleted)), *readded]
    results = store.search(np.stack([item.embedding for item in live]), top_k=10)
    for item, hits in zip(live, results, strict=True):
        assert hits[0].item.id == item.id
        assert not deleted_for_good & {hit.item.id for hit in hits}
    assert store.count() == 300 - len(deleted) + len(readded)


def test_delete_reports_only_existing_ids(store_factory):
    store = store_factory()
    items = make_items(unit_vectors(3, DIM, seed=7))
    store.upsert(items)

    assert store.delete([items[1].id, "missing", items[1].id]) == [items[1].id]
    assert store.delete([items[1].id]) == []
    assert store.delete([]) == []
    assert store.count() == 2


def test_deleted_item_is_gone_everywhere(store_factory):
    store = store_factory()
    items = make_items(unit_vectors(5, DIM, seed=8))
    store.upsert(items)

    store.delete([items[2].id])

    for read in (store.get, store.get_embedding, store.read_crop):
        with pytest.raises(ItemNotFoundError, match=items[2].id):
            read(items[2].id)
    assert items[2].id not in all_ids(store)
    assert items[2].id not in {hit.item.id for hit in store.search(items[2].embedding[None, :], top_k=5)[0]}


def test_shared_crop_survives_deleting_one_owner(store_factory):
    store = store_factory()
    vectors = unit_vectors(2, DIM, seed=9)
    first, second = make_items(vectors)
    second = replace(second, crop=first.crop)
    store.upsert([first, second])

    store.delete([first.id])

    assert store.read_crop(second.id) == first.crop
    assert store.get(second.id).sha256 == sha256_hex(first.crop)


def test_get_returns_metadata_as_written(store_factory):
    store = store_factory()
    item = make_items(unit_vectors(1, DIM, seed=10))[0]
    item = replace(item, extra={"track": 17, "tags": ["red coat", "backpack"], "score": 0.5, "none": None})
    store.upsert([item])

    stored = store.get(item.id)

    assert stored.id == item.id
    assert stored.camera_id == item.camera_id
    assert stored.captured_at == item.captured_at
    assert stored.source == item.source
    assert (stored.width, stored.height) == (item.width, item.height)
    assert stored.extra == item.extra
    assert stored.sha256 == sha256_hex(item.crop)
    assert store.read_crop(item.id) == item.crop
    np.testing.assert_array_equal(store.get_embedding(item.id), item.embedding)
    assert store.get_embedding(item.id).dtype == np.float32


def test_unusual_ids_round_trip(store_factory):
    store = store_factory()
    ids = ["cam3/2026-12-01T10:00:00Z/track17", "naïve/日本/🙂", "with space", "x" * MAX_ID_LENGTH, "'; DROP"]
    vectors = unit_vectors(len(ids), DIM, seed=11)
    items = [replace(item, id=item_id) for item, item_id in zip(make_items(vectors), ids, strict=True)]

    store.upsert(items)

    assert sorted(all_ids(store)) == sorted(ids)
    for item in items:
        assert store.get(item.id).id == item.id
        assert store.search(item.embedding[None, :], top_k=1)[0][0].item.id == item.id


@pytest.mark.parametrize(
    ("item_id", "message"),
    [
        ("", "empty"),
        ("x" * (MAX_ID_LENGTH + 1), "maximum"),
        ("tab\there", "control"),
        ("nul\x00", "control"),
        (17, "string"),
    ],
)
def test_invalid_ids_are_rejected(store_factory, item_id, message):
    store = store_factory()
    item = replace(make_items(unit_vectors(1, DIM, seed=12))[0], id=item_id)

    with pytest.raises(InvalidItemError, match=message):
        store.upsert([item])
    assert store.count() == 0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"embedding": np.ones(DIM + 1, dtype=np.float32) / np.sqrt(DIM + 1)}, "shape"),
        ({"embedding": np.ones(DIM, dtype=np.float32)}, "norm"),
        ({"embedding": np.zeros(DIM, dtype=np.float32)}, "norm"),
        ({"embedding": np.arange(DIM)}, "dtype"),
        ({"crop": b""}, "empty"),
        ({"width": 0}, "width"),
        ({"height": -5}, "height"),
        ({"captured_at": datetime(2026, 1, 1)}, "timezone"),
        ({"camera_id": ""}, "camera_id"),
        ({"extra": {"bad": float("nan")}}, "JSON"),
        ({"extra": {"bad": object()}}, "JSON"),
    ],
)
def test_invalid_items_are_rejected(store_factory, change, message):
    store = store_factory()
    item = replace(make_items(unit_vectors(1, DIM, seed=13))[0], **change)

    with pytest.raises(InvalidItemError, match=message):
        store.upsert([item])
    assert store.count() == 0


def test_float64_embedding_is_stored_as_float32(store_factory):
    store = store_factory()
    vector = unit_vectors(1, DIM, seed=14)[0].astype(np.float64)
    item = NewItem(id="f64", embedding=vector, crop=crop_bytes("f64"), width=1, height=1)

    store.upsert([item])

    np.testing.assert_allclose(store.get_embedding("f64"), vector, atol=1e-7)
