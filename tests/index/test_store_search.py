"""Search on every backend: exact results against a numpy reference, padding, filters, bad queries."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta, timezone

import numpy as np
import pytest
from conftest import DIM
from index_helpers import (
    BASE_TIME,
    assert_matches_reference,
    exact_ranking,
    make_items,
    unit_vectors,
)

from index.store import InvalidItemError, SearchFilters


def test_search_equals_numpy_reference(store_factory):
    store = store_factory()
    gallery = unit_vectors(400, DIM, seed=1)
    items = make_items(gallery)
    store.upsert(items)
    queries = unit_vectors(12, DIM, seed=2)

    results = store.search(queries, top_k=15)

    ids = [item.id for item in items]
    assert len(results) == len(queries)
    for query, hits in zip(queries, results, strict=True):
        assert_matches_reference(hits, exact_ranking(gallery, ids, query, 15))


def test_search_returns_stored_metadata(store_factory):
    store = store_factory()
    gallery = unit_vectors(20, DIM, seed=3)
    items = make_items(gallery)
    store.upsert(items)

    hit = store.search(gallery[7:8], top_k=1)[0][0]

    assert hit.item.id == items[7].id
    assert hit.item.camera_id == items[7].camera_id
    assert hit.item.captured_at == items[7].captured_at
    assert hit.item.extra == {"number": 7}
    assert hit.score == pytest.approx(1.0, abs=1e-5)


def test_top_k_larger_than_gallery_returns_gallery(store_factory):
    store = store_factory()
    gallery = unit_vectors(9, DIM, seed=4)
    store.upsert(make_items(gallery))

    hits = store.search(unit_vectors(1, DIM, seed=5), top_k=50)[0]

    assert len(hits) == 9
    assert sorted(hit.item.id for hit in hits) == sorted(item.id for item in make_items(gallery))
    assert all(np.isfinite(hit.score) and -1.0 - 1e-5 <= hit.score <= 1.0 + 1e-5 for hit in hits)
    assert [hit.rank for hit in hits] == list(range(1, 10))


def test_empty_gallery_returns_empty_lists(store_factory):
    store = store_factory()

    results = store.search(unit_vectors(3, DIM, seed=6), top_k=5)

    assert results == [[], [], []]


def test_no_padding_leaves_the_store(store_factory):
    store = store_factory()
    gallery = unit_vectors(30, DIM, seed=7)
    items = make_items(gallery)
    store.upsert(items)
    store.delete([item.id for item in items[:25]])
    live = {item.id for item in items[25:]}

    for top_k in (1, 5, 6, 100):
        for hits in store.search(unit_vectors(4, DIM, seed=8), top_k=top_k):
            assert len(hits) == min(top_k, 5)
            assert {hit.item.id for hit in hits} <= live
            assert all(np.isfinite(hit.score) and abs(hit.score) <= 1.0 + 1e-5 for hit in hits)


def test_zero_queries_return_no_lists(store_factory):
    store = store_factory()
    store.upsert(make_items(unit_vectors(3, DIM, seed=9)))

    assert store.search(np.empty((0, DIM), dtype=np.float32), top_k=3) == []


def test_rare_camera_filter_returns_all_its_items(store_factory):
    store = store_factory()
    gallery = unit_vectors(5000, DIM, seed=10)
    items = make_items(gallery, distinct_crops=50)
    rare = [3, 1717, 4242]
    items = [replace(item, camera_id="rare") if number in rare else item for number, item in enumerate(items)]
    store.upsert(items)
    rare_only = SearchFilters(camera_ids=frozenset({"rare"}))

    hits = store.search(unit_vectors(1, DIM, seed=11), top_k=10, filters=rare_only)[0]

    assert sorted(hit.item.id for hit in hits) == sorted(items[number].id for number in rare)
    assert all(hit.item.camera_id == "rare" for hit in hits)


def test_camera_filter_with_more_matches_than_top_k(store_factory):
    store = store_factory()
    gallery = unit_vectors(2000, DIM, seed=12)
    items = make_items(gallery, distinct_crops=50)
    rare_numbers = set(range(5, 2000, 100))  # 20 items
    items = [
        replace(item, camera_id="rare") if number in rare_numbers else item
        for number, item in enumerate(items)
    ]
    store.upsert(items)
    query = unit_vectors(1, DIM, seed=13)[0]
    rare_ids = [items[number].id for number in sorted(rare_numbers)]

    hits = store.search(query[None, :], top_k=10, filters=SearchFilters(camera_ids=frozenset({"rare"})))[0]

    assert len(hits) == 10
    assert all(hit.item.camera_id == "rare" for hit in hits)
    reference = exact_ranking(gallery[sorted(rare_numbers)], rare_ids, query, 10)
    assert_matches_reference(hits, reference)


def test_several_cameras_filter(store_factory):
    store = store_factory()
    gallery = unit_vectors(90, DIM, seed=14)
    items = make_items(gallery)
    store.upsert(items)

    hits = store.search(
        gallery[:1], top_k=100, filters=SearchFilters(camera_ids=frozenset({"cam1", "cam3"}))
    )[0]

    assert len(hits) == 60
    assert {hit.item.camera_id for hit in hits} == {"cam1", "cam3"}


def test_unknown_camera_filter_returns_nothing(store_factory):
    store = store_factory()
    store.upsert(make_items(unit_vectors(10, DIM, seed=15)))

    hits = store.search(
        unit_vectors(1, DIM, seed=16), top_k=5, filters=SearchFilters(camera_ids=frozenset({"x"}))
    )

    assert hits == [[]]


def test_time_range_filter_is_inclusive(store_factory):
    store = store_factory()
    gallery = unit_vectors(60, DIM, seed=17)
    items = make_items(gallery)  # item n captured at BASE_TIME + n minutes
    store.upsert(items)
    window = SearchFilters(
        captured_from=BASE_TIME + timedelta(minutes=10), captured_to=BASE_TIME + timedelta(minutes=19)
    )

    hits = store.search(unit_vectors(1, DIM, seed=18), top_k=60, filters=window)[0]

    assert sorted(hit.item.id for hit in hits) == [item.id for item in items[10:20]]
    assert store.count(window) == 10


def test_open_ended_time_filters(store_factory):
    store = store_factory()
    items = make_items(unit_vectors(30, DIM, seed=19))
    store.upsert(items)

    after = SearchFilters(captured_from=BASE_TIME + timedelta(minutes=25))
    before = SearchFilters(captured_to=BASE_TIME + timedelta(minutes=2))

    assert sorted(
        hit.item.id for hit in store.search(items[0].embedding[None, :], top_k=30, filters=after)[0]
    ) == [item.id for item in items[25:]]
    assert sorted(
        hit.item.id for hit in store.search(items[0].embedding[None, :], top_k=30, filters=before)[0]
    ) == [item.id for item in items[:3]]


def test_time_filter_compares_instants_across_timezones(store_factory):
    store = store_factory()
    items = make_items(unit_vectors(10, DIM, seed=20))
    store.upsert(items)
    plus_two = BASE_TIME.astimezone(timezone(timedelta(hours=2)))
    window = SearchFilters(
        captured_from=plus_two + timedelta(minutes=4), captured_to=plus_two + timedelta(minutes=5)
    )

    hits = store.search(items[0].embedding[None, :], top_k=10, filters=window)[0]

    assert sorted(hit.item.id for hit in hits) == [items[4].id, items[5].id]
    assert hits[0].item.captured_at.utcoffset() == timedelta(0)


def test_time_filter_excludes_items_without_time(store_factory):
    store = store_factory()
    gallery = unit_vectors(6, DIM, seed=21)
    items = make_items(gallery)
    items[2] = replace(items[2], captured_at=None)
    store.upsert(items)
    everything = SearchFilters(captured_from=BASE_TIME - timedelta(days=1))

    hits = store.search(gallery[2:3], top_k=10, filters=everything)[0]

    assert items[2].id not in {hit.item.id for hit in hits}
    assert len(hits) == 5


def test_camera_and_time_filters_combine(store_factory):
    store = store_factory()
    items = make_items(unit_vectors(30, DIM, seed=22))
    store.upsert(items)
    both = SearchFilters(camera_ids=frozenset({"cam2"}), captured_to=BASE_TIME + timedelta(minutes=10))

    hits = store.search(items[0].embedding[None, :], top_k=30, filters=both)[0]

    assert sorted(hit.item.id for hit in hits) == [items[n].id for n in (1, 4, 7, 10)]


def test_invalid_queries_are_rejected(store_factory):
    store = store_factory()
    store.upsert(make_items(unit_vectors(5, DIM, seed=23)))
    good = unit_vectors(1, DIM, seed=24)

    with pytest.raises(InvalidItemError, match="shape"):
        store.search(good[0], top_k=1)
    with pytest.raises(InvalidItemError, match="shape"):
        store.search(unit_vectors(1, DIM + 1, seed=25), top_k=1)
    with pytest.raises(InvalidItemError, match="norm"):
        store.search(good * 2, top_k=1)
    with pytest.raises(InvalidItemError, match="NaN"):
        store.search(np.full((1, DIM), np.nan, dtype=np.float32), top_k=1)
    for bad_top_k in (0, -3, 2.5, True):
        with pytest.raises(InvalidItemError, match="top_k"):
            store.search(good, top_k=bad_top_k)


def test_invalid_filters_are_rejected(store_factory):
    store = store_factory()
    query = unit_vectors(1, DIM, seed=26)

    with pytest.raises(InvalidItemError, match="timezone"):
        store.search(query, top_k=1, filters=SearchFilters(captured_from=BASE_TIME.replace(tzinfo=None)))
    with pytest.raises(InvalidItemError, match="after"):
        store.search(
            query,
            top_k=1,
            filters=SearchFilters(captured_from=BASE_TIME, captured_to=BASE_TIME - timedelta(1)),
        )
