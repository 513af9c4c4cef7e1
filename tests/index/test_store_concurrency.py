"""Threads on every backend: searches and reads running while another thread adds and deletes."""

from __future__ import annotations

import threading

import numpy as np
from conftest import DIM
from index_helpers import make_items, unit_vectors

SEARCH_THREADS = 3
WRITE_ROUNDS = 25


def test_searches_during_writes_see_no_error(store_factory):
    store = store_factory()
    initial = make_items(unit_vectors(200, DIM, seed=1))
    store.upsert(initial)
    added = make_items(unit_vectors(WRITE_ROUNDS * 8, DIM, seed=2), prefix="added")
    ever_written = {item.id for item in initial} | {item.id for item in added}
    queries = unit_vectors(4, DIM, seed=3)
    errors: list[BaseException] = []
    stop = threading.Event()
    searches = [0] * SEARCH_THREADS

    def search_loop(slot: int) -> None:
        try:
            while not stop.is_set():
                for hits in store.search(queries, top_k=10):
                    assert len(hits) == 10
                    assert [hit.rank for hit in hits] == list(range(1, 11))
                    assert {hit.item.id for hit in hits} <= ever_written
                    assert all(np.isfinite(hit.score) for hit in hits)
                store.count()
                store.list(limit=20)
                searches[slot] += 1
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    def write_loop() -> None:
        try:
            for round_number in range(WRITE_ROUNDS):
                store.upsert(added[round_number * 8 : round_number * 8 + 8])
                store.delete([initial[round_number * 4 + k].id for k in range(4)])
                store.upsert(initial[round_number * 4 : round_number * 4 + 2])  # re-add two of them
        except BaseException as e:
            errors.append(e)
        finally:
            stop.set()

    threads = [threading.Thread(target=search_loop, args=(slot,)) for slot in range(SEARCH_THREADS)]
    threads.append(threading.Thread(target=write_loop))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    assert not errors, errors
    assert all(count > 0 for count in searches)
    expected = 200 + WRITE_ROUNDS * 8 - WRITE_ROUNDS * 4 + WRITE_ROUNDS * 2
    assert store.count() == expected
    for item in added:
        assert store.search(item.embedding[None, :], top_k=1)[0][0].item.id == item.id


def test_concurrent_writers_keep_exact_count(store_factory):
    store = store_factory()
    errors: list[BaseException] = []

    def writer(prefix: str, seed: int) -> None:
        try:
            items = make_items(unit_vectors(60, DIM, seed=seed), prefix=prefix)
            for start in range(0, 60, 10):
                store.upsert(items[start : start + 10])
            store.delete([item.id for item in items[:15]])
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(f"w{n}", 10 + n)) for n in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    assert not errors, errors
    assert store.count() == 3 * 45
    assert len(store.search(unit_vectors(1, DIM, seed=20), top_k=500)[0]) == 135
