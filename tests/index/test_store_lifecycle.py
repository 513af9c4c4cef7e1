"""Lifecycle on every backend: restart, model identity guard, listing cursors, counts and reindex."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import numpy as np
import pytest
from conftest import DIM, MODEL_IDENTITY
from index_helpers import all_ids, crop_bytes, hash_embed, make_items, unit_vectors

from index.store import (
    GalleryError,
    InvalidCursorError,
    InvalidItemError,
    ModelMismatchError,
    NewItem,
    SearchFilters,
)


def test_restart_keeps_items_and_results(store_factory):
    store = store_factory()
    items = make_items(unit_vectors(200, DIM, seed=1))
    store.upsert(items)
    store.delete([item.id for item in items[:20]])
    queries = unit_vectors(5, DIM, seed=2)
    before = store.search(queries, top_k=10)
    metadata = {item.id: store.get(item.id) for item in items[20:]}
    store.close()

    reopened = store_factory()

    assert reopened.count() == 180
    assert all_ids(reopened) == sorted(metadata)
    for item_id, item in metadata.items():
        assert reopened.get(item_id) == item
    after = reopened.search(queries, top_k=10)
    for hits_before, hits_after in zip(before, after, strict=True):
        assert [hit.item.id for hit in hits_after] == [hit.item.id for hit in hits_before]
        np.testing.assert_allclose(
            [hit.score for hit in hits_after], [hit.score for hit in hits_before], atol=1e-6
        )


def test_restart_keeps_embeddings_and_crops(store_factory):
    store = store_factory()
    items = make_items(unit_vectors(10, DIM, seed=3))
    store.upsert(items)
    store.close()

    reopened = store_factory()

    for item in items:
        np.testing.assert_array_equal(reopened.get_embedding(item.id), item.embedding)
        assert reopened.read_crop(item.id) == item.crop


def test_other_model_identity_is_rejected(store_factory):
    store = store_factory()
    store.upsert(make_items(unit_vectors(3, DIM, seed=4)))
    store.close()

    with pytest.raises(ModelMismatchError) as raised:
        store_factory(model_identity="test-model-b")

    message = str(raised.value)
    assert MODEL_IDENTITY in message
    assert "test-model-b" in message
    assert f"({DIM}-d)" in message
    assert "axm reindex --checkpoint" in message


def test_other_dimension_is_rejected(store_factory):
    store_factory().close()

    with pytest.raises(ModelMismatchError) as raised:
        store_factory(dim=DIM * 2)

    assert f"({DIM}-d)" in str(raised.value)
    assert f"({DIM * 2}-d)" in str(raised.value)


def test_manifest_describes_gallery(store_factory, backend):
    store = store_factory()
    store.upsert(make_items(unit_vectors(7, DIM, seed=5)))

    manifest = store.manifest

    assert manifest.model_identity == MODEL_IDENTITY
    assert manifest.dim == DIM
    assert manifest.count == 7
    assert manifest.backend == backend
    assert manifest.backend_version
    assert manifest.schema_version >= 1


def test_count_and_camera_ids(store_factory):
    store = store_factory()
    items = make_items(unit_vectors(10, DIM, seed=6))
    items.append(
        NewItem(id="no-camera", embedding=unit_vectors(1, DIM, seed=7)[0], crop=b"x", width=1, height=1)
    )
    store.upsert(items)

    assert store.count() == 11
    assert store.count(SearchFilters(camera_ids=frozenset({"cam2"}))) == 3
    assert store.count(SearchFilters(camera_ids=frozenset())) == 0
    assert store.camera_ids() == ["cam1", "cam2", "cam3"]


def test_cursor_listing_visits_every_id_once(store_factory):
    store = store_factory()
    items = make_items(unit_vectors(100, DIM, seed=8))
    store.upsert(items)

    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        page = store.list(cursor=cursor, limit=7)
        assert len(page.items) <= 7
        seen.extend(item.id for item in page.items)
        pages += 1
        if page.next_cursor is None:
            break
        cursor = page.next_cursor

    assert seen == sorted(item.id for item in items)
    assert pages == 15


def test_cursor_listing_while_items_change(store_factory):
    store = store_factory()
    items = make_items(unit_vectors(60, DIM, seed=9))
    store.upsert(items)
    stable = {item.id for item in items[::2]}
    churn = [item.id for item in items[1::2]]
    extra = make_items(unit_vectors(20, DIM, seed=10), prefix="late")

    seen: list[str] = []
    cursor = None
    step = 0
    while True:
        page = store.list(cursor=cursor, limit=6)
        seen.extend(item.id for item in page.items)
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
        store.delete(churn[step * 3 : step * 3 + 3])  # deletes ids before and after the cursor
        store.upsert(extra[step * 2 : step * 2 + 2])
        step += 1

    assert len(seen) == len(set(seen))
    assert stable <= set(seen)
    assert seen == sorted(seen)


def test_cursor_listing_with_filters(store_factory):
    store = store_factory()
    items = make_items(unit_vectors(40, DIM, seed=11))
    store.upsert(items)
    cam1 = SearchFilters(camera_ids=frozenset({"cam1"}))

    first = store.list(limit=5, filters=cam1)
    second = store.list(cursor=first.next_cursor, limit=50, filters=cam1)

    listed = [item.id for item in first.items + second.items]
    assert listed == sorted(item.id for item in items if item.camera_id == "cam1")
    assert second.next_cursor is None


def test_foreign_cursors_are_rejected(store_factory):
    store = store_factory("first")
    other = store_factory("second")
    for gallery in (store, other):
        gallery.upsert(make_items(unit_vectors(10, DIM, seed=12)))
    other_cursor = other.list(limit=2).next_cursor
    own_cursor = store.list(limit=2).next_cursor

    for bad in ("not a cursor", other_cursor, own_cursor[:-2] + "AA"):
        with pytest.raises(InvalidCursorError):
            store.list(cursor=bad, limit=2)
    with pytest.raises(InvalidCursorError, match="filters"):
        store.list(cursor=own_cursor, limit=2, filters=SearchFilters(camera_ids=frozenset({"cam1"})))


def test_listing_limit_is_checked(store_factory):
    store = store_factory()

    for bad in (0, -1, 10**9, 2.0):
        with pytest.raises(InvalidItemError, match="limit"):
            store.list(limit=bad)


def test_iter_crops_yields_every_crop(store_factory):
    store = store_factory()
    items = make_items(unit_vectors(25, DIM, seed=13))
    store.upsert(items)

    batches = list(store.iter_crops(batch_size=10))

    assert [len(batch) for batch in batches] == [10, 10, 5]
    assert dict(pair for batch in batches for pair in batch) == {item.id: item.crop for item in items}


def test_reindex_rewrites_every_item(store_factory):
    store = store_factory()
    items = make_items(unit_vectors(50, DIM, seed=14))
    store.upsert(items)
    new_dim = 24
    embed = hash_embed(new_dim)
    calls: list[tuple[int, int]] = []

    report = store.reindex(
        embed, model_identity="test-model-b", dim=new_dim, batch_size=16, progress=lambda *p: calls.append(p)
    )

    assert report.rewritten == 50
    assert report.failed == {}
    assert (report.model_identity, report.dim) == ("test-model-b", new_dim)
    assert calls == [(16, 50), (32, 50), (48, 50), (50, 50)]
    assert (store.manifest.model_identity, store.manifest.dim) == ("test-model-b", new_dim)
    for item in items:
        expected = embed([item.crop])[0]
        np.testing.assert_allclose(store.get_embedding(item.id), expected, atol=1e-6)
        assert store.search(expected[None, :], top_k=1)[0][0].item.id == item.id
        assert store.get(item.id).extra == item.extra
    with pytest.raises(InvalidItemError, match="shape"):
        store.search(items[0].embedding[None, :], top_k=1)


def test_reindex_survives_restart_and_guards_identity(store_factory):
    store = store_factory()
    items = make_items(unit_vectors(12, DIM, seed=15))
    store.upsert(items)
    store.reindex(hash_embed(16), model_identity="test-model-b", dim=16)
    store.close()

    with pytest.raises(ModelMismatchError):
        store_factory()
    reopened = store_factory(model_identity="test-model-b", dim=16)

    assert reopened.count() == 12
    assert reopened.manifest.model_identity == "test-model-b"
    np.testing.assert_allclose(
        reopened.get_embedding(items[0].id), hash_embed(16)([items[0].crop])[0], atol=1e-6
    )


def test_reindex_reports_and_removes_failed_items(store_factory):
    store = store_factory()
    items = make_items(unit_vectors(10, DIM, seed=16))
    store.upsert(items)
    embed = hash_embed(16)
    poisoned = items[4].crop

    def flaky_embed(crops):
        if poisoned in crops:
            raise ValueError("cannot decode image")
        return embed(crops)

    report = store.reindex(flaky_embed, model_identity="test-model-b", dim=16, batch_size=4)

    assert report.rewritten == 9
    assert list(report.failed) == [items[4].id]
    assert "cannot decode image" in report.failed[items[4].id]
    assert store.count() == 9
    assert items[4].id not in all_ids(store)


def test_reindex_rejects_bad_embed_output_everywhere(store_factory):
    store = store_factory()
    items = make_items(unit_vectors(5, DIM, seed=17))
    store.upsert(items)

    with pytest.raises(GalleryError, match="failed for all 5 items"):
        store.reindex(lambda crops: np.ones((len(crops), 16), dtype=np.float32), model_identity="b", dim=16)

    assert store.manifest.model_identity == MODEL_IDENTITY
    assert store.count() == 5
    assert store.search(items[0].embedding[None, :], top_k=1)[0][0].item.id == items[0].id


def test_reindex_embeds_items_written_meanwhile(store_factory):
    store = store_factory()
    items = make_items(unit_vectors(30, DIM, seed=18))
    store.upsert(items)
    embed = hash_embed(16)
    late = NewItem(
        id="late", embedding=unit_vectors(1, DIM, seed=19)[0], crop=crop_bytes("late"), width=1, height=1
    )
    replaced = replace(items[25], crop=b"replaced while reindexing")

    def write_during_first_batch(done, total):
        if done == 10:
            store.upsert([late, replaced])
            store.delete([items[29].id])

    report = store.reindex(
        embed, model_identity="b", dim=16, batch_size=10, progress=write_during_first_batch
    )

    assert report.failed == {}
    assert store.count() == 30
    np.testing.assert_allclose(store.get_embedding("late"), embed([late.crop])[0], atol=1e-6)
    np.testing.assert_allclose(store.get_embedding(items[25].id), embed([replaced.crop])[0], atol=1e-6)
    assert store.search(embed([late.crop]), top_k=1)[0][0].item.id == "late"
    assert hashlib.sha256(store.read_crop(items[25].id)).hexdigest() == store.get(items[25].id).sha256


def test_closed_store_rejects_calls(store_factory):
    store = store_factory()
    store.close()

    with pytest.raises(GalleryError, match="closed"):
        store.count()
    with pytest.raises(GalleryError, match="closed"):
        store.search(unit_vectors(1, DIM, seed=20), top_k=1)
    store.close()  # closing twice is harmless
