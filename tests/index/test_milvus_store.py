"""The Milvus gallery on Milvus Lite: what only this backend has (alias generations, filter quoting,
the identity properties, the Lite directory lock) and its search checked against exact numpy ranking.

The backend-independent behaviour runs for both backends through the `store_factory` fixture.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from index.milvus_schema import CollectionConfig, filter_expression, quote
from index.milvus_store import DEFAULT_COLLECTION, MilvusGalleryStore, open_milvus_store
from index.store import (
    GalleryError,
    InvalidConfigError,
    InvalidCursorError,
    ItemNotFoundError,
    ModelMismatchError,
    NewItem,
    SearchFilters,
    StoreCorruptError,
    StoreLockedError,
    StoreNotFoundError,
)

pytestmark = pytest.mark.milvus

REPO_ROOT = Path(__file__).resolve().parents[2]
DIM = 16
IDENTITY = "test-model-a"
T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
# Ids that need escaping in a Milvus string literal, or that compare differently as bytes and as text.
AWKWARD_IDS = ['q"uote', "back\\slash", "sin'gle", "x]y", 'a" or id != "', "naïve/日本/🙂", "z" * 512]


def unit_vectors(rng: np.random.Generator, count: int, dim: int = DIM) -> np.ndarray:
    vectors = rng.standard_normal((count, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def make_items(rng: np.random.Generator, count: int, *, prefix: str = "item") -> list[NewItem]:
    """Items on cameras cam0..cam2; every fourth item has no capture time."""
    vectors = unit_vectors(rng, count)
    return [
        NewItem(
            id=f"{prefix}{i:03d}",
            embedding=vectors[i],
            crop=f"crop bytes of {prefix}{i}".encode(),
            width=60 + i,
            height=160,
            camera_id=f"cam{i % 3}",
            captured_at=None if i % 4 == 3 else T0 + timedelta(minutes=i),
            source=f"/data/{prefix}{i}.png",
            extra={"index": i, "tags": ["a", "b"]},
        )
        for i in range(count)
    ]


@pytest.fixture
def lite_uri(tmp_path: Path) -> str:
    return str(tmp_path / "milvus" / "gallery.db")


@pytest.fixture
def store(lite_uri: str, tmp_path: Path):
    opened = open_milvus_store(lite_uri, model_identity=IDENTITY, dim=DIM, crops_dir=tmp_path / "crops")
    yield opened
    opened.close()


def exact_ranking(store: MilvusGalleryStore, items: list[NewItem], query: np.ndarray, keep) -> list[str]:
    """Rank the matching items by inner product with numpy, best first (ties by id)."""
    matching = [item for item in items if keep(item)]
    scores = [float(np.dot(item.embedding, query)) for item in matching]
    order = sorted(range(len(matching)), key=lambda i: (-scores[i], matching[i].id))
    return [matching[i].id for i in order]


def test_search_matches_exact_ranking_with_filters(store):
    rng = np.random.default_rng(7)
    items = make_items(rng, 60)
    store.upsert(items)
    queries = unit_vectors(rng, 5)
    filters = SearchFilters(
        camera_ids=frozenset({"cam0", "cam2"}),
        captured_from=T0 + timedelta(minutes=5),
        captured_to=T0 + timedelta(minutes=50),
    )

    def keep(item: NewItem) -> bool:
        return (
            item.camera_id in filters.camera_ids
            and item.captured_at is not None
            and filters.captured_from <= item.captured_at <= filters.captured_to
        )

    results = store.search(queries, top_k=8, filters=filters)

    assert len(results) == 5
    for query, hits in zip(queries, results, strict=True):
        expected = exact_ranking(store, items, query, keep)[:8]
        assert [hit.item.id for hit in hits] == expected
        assert [hit.rank for hit in hits] == list(range(1, 9))
        # Milvus computes the inner product in float32: agreement to 1e-5 is rounding only.
        by_id = {item.id: item for item in items}
        for hit in hits:
            assert hit.score == pytest.approx(float(np.dot(by_id[hit.item.id].embedding, query)), abs=1e-5)


def test_search_returns_top_k_under_selective_filter(store):
    rng = np.random.default_rng(8)
    items = make_items(rng, 90)
    store.upsert(items)
    only_cam1 = SearchFilters(camera_ids=frozenset({"cam1"}))

    hits = store.search(unit_vectors(rng, 1), top_k=25, filters=only_cam1)[0]

    assert len(hits) == 25
    assert {hit.item.camera_id for hit in hits} == {"cam1"}


def test_search_with_empty_camera_set_returns_nothing(store):
    rng = np.random.default_rng(9)
    store.upsert(make_items(rng, 5))

    results = store.search(unit_vectors(rng, 2), top_k=3, filters=SearchFilters(camera_ids=frozenset()))

    assert results == [[], []]


def test_awkward_ids_round_trip(store):
    rng = np.random.default_rng(10)
    vectors = unit_vectors(rng, len(AWKWARD_IDS))
    items = [
        NewItem(
            id=item_id, embedding=vectors[i], crop=item_id.encode(), width=10, height=20, camera_id=item_id
        )
        for i, item_id in enumerate(AWKWARD_IDS)
    ]
    store.upsert(items)

    for item in items:
        assert store.get(item.id).id == item.id
        assert store.read_crop(item.id) == item.id.encode()
        assert store.count(SearchFilters(camera_ids=frozenset({item.id}))) == 1
    listed = store.list(limit=100).items
    assert [item.id for item in listed] == sorted(AWKWARD_IDS)
    assert store.camera_ids() == sorted(AWKWARD_IDS)
    assert store.delete(['a" or id != "']) == ['a" or id != "']
    assert store.count() == len(AWKWARD_IDS) - 1


def test_quote_escapes_backslash_and_double_quote():
    assert quote('a"b\\c') == '"a\\"b\\\\c"'
    assert quote("plain") == '"plain"'


def test_filter_expression_of_time_bounds():
    filters = SearchFilters(captured_from=datetime(1970, 1, 1, 0, 0, 1, tzinfo=UTC))

    assert filter_expression(filters) == "captured_at >= 1000000"
    assert filter_expression(None) == ""


def test_listing_pages_follow_id_order_with_filters(store):
    rng = np.random.default_rng(11)
    items = make_items(rng, 47)
    store.upsert(items[::-1])
    filters = SearchFilters(camera_ids=frozenset({"cam0", "cam1"}))
    expected = sorted(item.id for item in items if item.camera_id in filters.camera_ids)

    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        page = store.list(cursor=cursor, limit=7, filters=filters)
        seen.extend(item.id for item in page.items)
        pages += 1
        cursor = page.next_cursor
        if cursor is None:
            break

    assert seen == expected
    assert pages == -(-len(expected) // 7)


def test_cursor_is_rejected_with_other_filters_or_edited(store):
    rng = np.random.default_rng(12)
    store.upsert(make_items(rng, 10))
    cursor = store.list(limit=3).next_cursor
    assert cursor is not None

    with pytest.raises(InvalidCursorError):
        store.list(cursor=cursor, limit=3, filters=SearchFilters(camera_ids=frozenset({"cam0"})))
    with pytest.raises(InvalidCursorError):
        store.list(cursor=cursor[:-2] + "AA", limit=3)


def test_cursor_survives_reopen(lite_uri, tmp_path):
    rng = np.random.default_rng(13)
    with open_milvus_store(lite_uri, model_identity=IDENTITY, dim=DIM, crops_dir=tmp_path / "crops") as first:
        first.upsert(make_items(rng, 6))
        cursor = first.list(limit=4).next_cursor

    with open_milvus_store(
        lite_uri, model_identity=IDENTITY, dim=DIM, crops_dir=tmp_path / "crops"
    ) as second:
        page = second.list(cursor=cursor, limit=4)

    assert [item.id for item in page.items] == ["item004", "item005"]


def test_upsert_keeps_created_at_and_replaces_crop(store):
    rng = np.random.default_rng(14)
    item = make_items(rng, 1)[0]
    assert store.upsert([item])[0].status == "created"
    first = store.get(item.id)
    old_crop_path = store._crops.path_for(first.sha256)

    changed = NewItem(
        id=item.id, embedding=item.embedding, crop=b"new bytes", width=5, height=9, camera_id=None
    )
    assert store.upsert([changed])[0].status == "updated"
    second = store.get(item.id)

    assert second.created_at == first.created_at
    assert second.updated_at > first.updated_at
    assert second.camera_id is None
    assert second.captured_at is None
    assert store.read_crop(item.id) == b"new bytes"
    assert not old_crop_path.exists()


def test_delete_keeps_crop_shared_by_another_item(store):
    rng = np.random.default_rng(15)
    vectors = unit_vectors(rng, 2)
    shared = b"the same bytes"
    store.upsert(
        [NewItem(id=f"twin{i}", embedding=vectors[i], crop=shared, width=4, height=8) for i in range(2)]
    )
    sha = store.get("twin0").sha256

    assert store.delete(["twin0", "absent"]) == ["twin0"]
    assert store._crops.path_for(sha).exists()
    assert store.delete(["twin1"]) == ["twin1"]
    assert not store._crops.path_for(sha).exists()
    with pytest.raises(ItemNotFoundError):
        store.get("twin1")


def test_camera_ids_are_distinct_and_sorted(store, monkeypatch):
    # Rounds of 4 rows over 40 items force several rounds that each return one camera many times.
    monkeypatch.setattr("index.milvus_store.CAMERA_SCAN_ROWS", 4)
    rng = np.random.default_rng(16)
    items = make_items(rng, 40)
    no_camera = NewItem(id="zz-none", embedding=unit_vectors(rng, 1)[0], crop=b"n", width=1, height=1)
    store.upsert([*items, no_camera])

    assert store.camera_ids() == ["cam0", "cam1", "cam2"]


def test_reopen_with_other_identity_or_dim_is_rejected(lite_uri, tmp_path):
    crops = tmp_path / "crops"
    with open_milvus_store(lite_uri, model_identity=IDENTITY, dim=DIM, crops_dir=crops) as store:
        store.upsert(make_items(np.random.default_rng(17), 3))

    with pytest.raises(ModelMismatchError, match="test-model-a"):
        open_milvus_store(lite_uri, model_identity="test-model-b", dim=DIM, crops_dir=crops)
    with pytest.raises(ModelMismatchError, match=f"{DIM}-d"):
        open_milvus_store(lite_uri, model_identity=IDENTITY, dim=DIM * 2, crops_dir=crops)
    with open_milvus_store(lite_uri, model_identity=IDENTITY, dim=DIM, crops_dir=crops) as store:
        assert store.count() == 3


def test_open_without_create_raises_store_not_found(lite_uri, tmp_path):
    with pytest.raises(StoreNotFoundError):
        open_milvus_store(
            lite_uri, model_identity=IDENTITY, dim=DIM, crops_dir=tmp_path / "crops", create=False
        )


def test_plain_collection_with_gallery_name_is_rejected(lite_uri, tmp_path):
    from milvus_lite.server_manager import server_manager_instance
    from pymilvus import MilvusClient

    Path(lite_uri).parent.mkdir(parents=True)
    client = MilvusClient(lite_uri)
    client.create_collection("people", dimension=4)
    client.close()
    server_manager_instance.release_server(lite_uri)

    with pytest.raises(StoreCorruptError, match="plain Milvus collection"):
        open_milvus_store(
            lite_uri, model_identity=IDENTITY, dim=DIM, crops_dir=tmp_path / "crops", collection="people"
        )


def test_unsupported_index_type_is_rejected():
    with pytest.raises(InvalidConfigError, match="DISKANN"):
        CollectionConfig(index_type="DISKANN")


def test_hnsw_ef_is_raised_to_top_k():
    config = CollectionConfig(index_type="HNSW")

    assert config.resolved_search_params(500)["ef"] == 500
    assert config.resolved_search_params(10)["ef"] == 128
    assert config.spec == "HNSW(M=16,efConstruction=200)/IP"


def test_reopen_keeps_recorded_index_type(lite_uri, tmp_path):
    crops = tmp_path / "crops"
    hnsw = CollectionConfig(index_type="HNSW")
    items = make_items(np.random.default_rng(22), 300)
    with open_milvus_store(
        lite_uri, model_identity=IDENTITY, dim=DIM, crops_dir=crops, collection_config=hnsw
    ) as store:
        store.upsert(items)

    with open_milvus_store(lite_uri, model_identity=IDENTITY, dim=DIM, crops_dir=crops) as reopened:
        spec = reopened.manifest.index_spec
        # top_k above HNSW's default ef (128) fails unless ef is raised with it.
        hits = reopened.search(items[0].embedding[None, :], top_k=200)[0]

    assert spec == "HNSW(M=16,efConstruction=200)/IP"
    assert len(hits) == 200
    assert hits[0].item.id == items[0].id


def test_reindex_swaps_alias_and_drops_old_collection(store):
    rng = np.random.default_rng(18)
    items = make_items(rng, 12)
    store.upsert(items)
    new_dim = 8
    basis = np.eye(new_dim, dtype=np.float32)
    bad_crop = items[5].crop
    calls: list[tuple[int, int]] = []

    def embed(crops):
        if bad_crop in crops:
            raise ValueError("undecodable crop")
        return np.stack([basis[len(crop) % new_dim] for crop in crops])

    old_collection = store.collection_name
    report = store.reindex(
        embed,
        model_identity="test-model-b",
        dim=new_dim,
        batch_size=5,
        progress=lambda done, total: calls.append((done, total)),
    )

    assert report.rewritten == 11
    assert list(report.failed) == [items[5].id]
    assert report.model_identity == "test-model-b"
    assert store.collection_name == f"{DEFAULT_COLLECTION}__g2"
    assert store.manifest.model_identity == "test-model-b"
    assert store.manifest.dim == new_dim
    assert store.count() == 11
    assert calls[-1] == (12, 12)
    first = items[0]
    np.testing.assert_array_equal(store.get_embedding(first.id), basis[len(first.crop) % new_dim])
    assert store.get(first.id).extra == first.extra
    assert old_collection not in store._client.list_collections()


def test_reindex_applies_writes_made_while_it_runs(store):
    rng = np.random.default_rng(19)
    items = make_items(rng, 9)
    store.upsert(items)
    newcomer = make_items(rng, 1, prefix="late")[0]
    changed = NewItem(id=items[1].id, embedding=items[1].embedding, crop=b"replaced crop", width=7, height=7)
    new_dim = 4
    marker = np.array([0.0, 0.0, 0.0, 1.0], dtype=np.float32)
    calls = 0

    def embed_while_others_write(crops):
        nonlocal calls
        calls += 1
        if calls == 1:  # the first batch (item000..item003) is embedded; the rest is still ahead
            store.upsert([newcomer, changed])
            store.delete([items[0].id, items[6].id])
        return np.stack(
            [marker if crop == b"replaced crop" else np.eye(new_dim, dtype=np.float32)[0] for crop in crops]
        )

    report = store.reindex(embed_while_others_write, model_identity="test-model-b", dim=new_dim, batch_size=4)

    expected = sorted({item.id for item in items} - {items[0].id, items[6].id} | {newcomer.id})
    assert report.failed == {}
    assert report.rewritten == len(expected)
    assert [item.id for item in store.list(limit=100).items] == expected
    np.testing.assert_array_equal(store.get_embedding(items[1].id), marker)
    assert store.read_crop(items[1].id) == b"replaced crop"
    assert store.get_embedding(newcomer.id).shape == (new_dim,)


def test_reindex_fails_when_another_process_deletes(store):
    rng = np.random.default_rng(20)
    items = make_items(rng, 6)
    store.upsert(items)
    other_process = store._client  # a delete the store does not see, as from another replica

    def embed_while_another_process_deletes(crops):
        other_process.delete(store.collection_name, filter=f'id == "{items[0].id}"')
        return np.tile(np.eye(DIM, dtype=np.float32)[0], (len(crops), 1))

    with pytest.raises(GalleryError, match="another process deleted items"):
        store.reindex(embed_while_another_process_deletes, model_identity="test-model-b", dim=DIM)

    assert store.manifest.model_identity == IDENTITY
    assert store.collection_name == f"{DEFAULT_COLLECTION}__g1"
    assert f"{DEFAULT_COLLECTION}__g2" not in store._client.list_collections()
    assert store.count() == 5


def test_reindex_where_every_crop_fails_keeps_old_gallery(store):
    rng = np.random.default_rng(21)
    store.upsert(make_items(rng, 3))

    def embed_nothing(crops):
        raise ValueError("decoder broken")

    with pytest.raises(GalleryError, match="reindex failed for all 3 items"):
        store.reindex(embed_nothing, model_identity="test-model-b", dim=DIM)

    assert store.manifest.model_identity == IDENTITY
    assert store.count() == 3


def run_python(code: str, *, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_writes_survive_process_exit_without_flush(lite_uri, tmp_path):
    writer = run_python(
        f"""
        import numpy as np
        from pathlib import Path
        from index.milvus_store import open_milvus_store
        from index.store import NewItem
        store = open_milvus_store({lite_uri!r}, model_identity={IDENTITY!r}, dim={DIM}, crops_dir=Path({str(tmp_path / "crops")!r}))
        vector = np.zeros({DIM}, dtype=np.float32); vector[0] = 1.0
        store.upsert([NewItem(id="from-child", embedding=vector, crop=b"child", width=3, height=4)])
        store.close()
        """
    )
    assert writer.returncode == 0, writer.stderr

    with open_milvus_store(lite_uri, model_identity=IDENTITY, dim=DIM, crops_dir=tmp_path / "crops") as store:
        assert store.get("from-child").width == 3
        assert store.read_crop("from-child") == b"child"
        hits = store.search(np.eye(DIM, dtype=np.float32)[:1], top_k=1)[0]
        assert hits[0].item.id == "from-child"


def test_lite_directory_locked_by_other_process(lite_uri, tmp_path):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import sys
                from pathlib import Path
                from index.milvus_store import open_milvus_store
                store = open_milvus_store({lite_uri!r}, model_identity={IDENTITY!r}, dim={DIM}, crops_dir=Path({str(tmp_path / "crops")!r}))
                print("open", flush=True)
                sys.stdin.readline()
                store.close()
                """
            ),
        ],
        cwd=REPO_ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "open"
        with pytest.raises(StoreLockedError, match="Another process may hold it"):
            open_milvus_store(lite_uri, model_identity=IDENTITY, dim=DIM, crops_dir=tmp_path / "crops")
    finally:
        holder.communicate("\n", timeout=60)
    assert holder.returncode == 0


def test_stores_in_one_process_share_lite_server(lite_uri, tmp_path):
    first = open_milvus_store(lite_uri, model_identity=IDENTITY, dim=DIM, crops_dir=tmp_path / "crops")
    second = open_milvus_store(lite_uri, model_identity=IDENTITY, dim=DIM, crops_dir=tmp_path / "crops")
    first.upsert(make_items(np.random.default_rng(20), 2))
    first.close()

    assert second.count() == 2
    second.close()
    with pytest.raises(GalleryError, match="closed"):
        second.count()
