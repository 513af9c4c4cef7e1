"""The distributed gallery backend: embeddings and metadata in Milvus, crops in a shared directory.

`open_milvus_store(uri, model_identity=..., dim=..., crops_dir=...)` opens (or creates) the gallery
named `collection` on a Milvus server (`http://host:19530`) or in a Milvus Lite directory (a path
ending in `.db`). The gallery name is a Milvus alias that points at the collection of the current
generation (`<name>__g1`, `<name>__g2`, ...). `reindex` (`index.milvus_reindex`) fills the next
generation's collection and moves the alias to it in one call, so searches switch from the old
embeddings to the new ones at once, and then drops the old collection.

Crops are stored as files named by their sha256 under `crops_dir` (`index.files.CropStore`, the
layout of the FAISS store). Every service replica must mount the same directory.

Consistency: collections use Milvus' Strong consistency level, so a read returns every write that
completed before it. Writes in one process are serialised by a lock; across processes, two writers
of the same id at the same moment can both report `created`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pymilvus import MilvusClient

from index.cursor import decode_cursor, encode_cursor
from index.files import CropStore
from index.milvus_connection import (
    acquire_lite,
    alias_exists,
    connect,
    create_gallery,
    is_lite_uri,
    milvus_errors,
    release_lite,
)
from index.milvus_reindex import MilvusReindexMixin
from index.milvus_schema import (
    INDEX_DEFAULTS,
    MAX_TOP_K,
    METADATA_FIELDS,
    PROPERTY_CURSOR_SECRET,
    PROPERTY_DIM,
    PROPERTY_IDENTITY,
    PROPERTY_INDEX_SPEC,
    PROPERTY_SCHEMA,
    CollectionConfig,
    check_model,
    combine,
    embedding_from_row,
    filter_expression,
    ids_expression,
    item_from_row,
    item_row,
    quote,
    quote_list,
)
from index.store import (
    SCHEMA_VERSION,
    GalleryError,
    GalleryItem,
    GalleryStore,
    InvalidConfigError,
    InvalidItemError,
    ItemNotFoundError,
    Manifest,
    ModelMismatchError,
    NewItem,
    Page,
    SearchFilters,
    SearchHit,
    StoreCorruptError,
    StoreNotFoundError,
    WriteResult,
)
from index.validation import (
    PreparedItem,
    now_epoch_us,
    prepare_item,
    validate_filters,
    validate_item_id,
    validate_queries,
    validate_top_k,
)

logger = logging.getLogger(__name__)

DEFAULT_COLLECTION = "axm_gallery"
# Ids per `id in [...]` lookup or delete, which keeps each expression and response small.
LOOKUP_CHUNK = 1_000
MAX_PAGE_SIZE = 1_000
# Rows read per round by `camera_ids`.
CAMERA_SCAN_ROWS = 1_000


class MilvusGalleryStore(MilvusReindexMixin, GalleryStore):
    """A `GalleryStore` on a Milvus alias; see the module docstring. Open it with `open_milvus_store`."""

    def __init__(
        self,
        client: MilvusClient,
        *,
        uri: str,
        name: str,
        crops_dir: Path,
        collection_config: CollectionConfig,
        write_batch_size: int,
    ) -> None:
        self._client = client
        self._uri = uri
        self._name = name
        self._crops = CropStore(crops_dir)
        self._collection_config = collection_config
        self._write_batch_size = write_batch_size
        self._write_lock = threading.RLock()
        self._reindex_running = threading.Lock()
        # Ids this process deleted while a reindex runs; None when none runs.
        self._deleted_during_reindex: set[str] | None = None
        self._closed = False
        self._collection = ""
        self._properties: dict[str, str] = {}
        self._search_config = collection_config
        self._refresh_collection()

    # --- opening -------------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        uri: str,
        *,
        model_identity: str,
        dim: int,
        crops_dir: Path,
        collection: str = DEFAULT_COLLECTION,
        token: str = "",
        collection_config: CollectionConfig | None = None,
        create: bool = True,
        write_batch_size: int = 1_000,
    ) -> MilvusGalleryStore:
        """Open the gallery `collection` at `uri`, creating it when absent and `create` is True.

        Raises `ModelMismatchError` when the gallery was built with another model identity or dimension,
        `StoreNotFoundError` when it is absent and `create` is False, and `StoreLockedError` when another
        process has the Milvus Lite directory open.
        """
        check_model(model_identity, dim)
        config = collection_config or CollectionConfig()
        client = connect(uri, token)
        if is_lite_uri(uri):
            acquire_lite(uri)
        try:
            with milvus_errors(f"open the gallery {collection!r}"):
                if not alias_exists(client, collection):
                    if not create:
                        raise StoreNotFoundError(
                            f"no gallery {collection!r} at {uri}; create it by opening with create=True "
                            "(`axm serve` and `axm ingest` do)"
                        )
                    create_gallery(client, collection, model_identity=model_identity, dim=dim, config=config)
            store = cls(
                client,
                uri=uri,
                name=collection,
                crops_dir=Path(crops_dir),
                collection_config=config,
                write_batch_size=write_batch_size,
            )
            store._check_identity(model_identity, dim)
        except BaseException:
            client.close()
            if is_lite_uri(uri):
                release_lite(uri)
            raise
        logger.info(
            "Milvus gallery %r opened at %s: collection %s, %d items, %d-d, index %s",
            collection,
            uri,
            store._collection,
            store.count(),
            dim,
            store._properties.get(PROPERTY_INDEX_SPEC, config.spec),
        )
        return store

    def _refresh_collection(self) -> None:
        """Resolve the alias to its collection and read that collection's properties."""
        with milvus_errors(f"describe the gallery {self._name!r}"):
            description = self._client.describe_collection(self._name)
            self._collection = str(description["collection_name"])
            self._properties = {str(k): str(v) for k, v in (description.get("properties") or {}).items()}
            self._client.load_collection(self._collection)
        missing = [
            key for key in (PROPERTY_IDENTITY, PROPERTY_DIM, PROPERTY_SCHEMA) if key not in self._properties
        ]
        if missing:
            raise StoreCorruptError(
                f"Milvus collection {self._collection!r} (alias {self._name!r}) lacks the properties {missing}, so "
                "it was not created by this store; choose another collection name"
            )
        self._search_config = self._config_of_collection()
        if int(self._properties[PROPERTY_SCHEMA]) != SCHEMA_VERSION:
            raise StoreCorruptError(
                f"gallery {self._name!r} has schema version {self._properties[PROPERTY_SCHEMA]}; this version of "
                f"the store reads version {SCHEMA_VERSION}; migrate it with a matching release"
            )

    def _config_of_collection(self) -> CollectionConfig:
        """Return the configuration searches need for the index the collection was built with.

        A gallery reopened with another `CollectionConfig` keeps its index until the next reindex, so its
        search parameters must follow the recorded index type, not the configured one.
        """
        recorded = self._properties.get(PROPERTY_INDEX_SPEC, "").split("(")[0].split("/")[0]
        if recorded not in INDEX_DEFAULTS or recorded == self._collection_config.index_type:
            return self._collection_config
        logger.warning(
            "gallery %r was built with a %s index but %s is configured; searches use %s parameters, and the "
            "configured index applies from the next reindex",
            self._name,
            recorded,
            self._collection_config.index_type,
            recorded,
        )
        return CollectionConfig(index_type=recorded)

    def _check_identity(self, model_identity: str, dim: int) -> None:
        stored_identity = self._properties[PROPERTY_IDENTITY]
        stored_dim = int(self._properties[PROPERTY_DIM])
        if stored_identity != model_identity or stored_dim != dim:
            raise ModelMismatchError(
                f"gallery {self._name!r} at {self._uri} was built with model {stored_identity} ({stored_dim}-d); "
                f"the loaded model is {model_identity} ({dim}-d). Re-embed the stored crops with "
                "`axm reindex --checkpoint NEW`, or open another gallery"
            )

    @property
    def collection_name(self) -> str:
        """The Milvus collection the gallery alias points at now."""
        return self._collection

    @property
    def dim(self) -> int:
        return int(self._properties[PROPERTY_DIM])

    @property
    def model_identity(self) -> str:
        return self._properties[PROPERTY_IDENTITY]

    @property
    def manifest(self) -> Manifest:
        self._check_open()
        with milvus_errors("read the server version"):
            version = self._client.get_server_version()
        return Manifest(
            model_identity=self.model_identity,
            dim=self.dim,
            schema_version=int(self._properties[PROPERTY_SCHEMA]),
            backend="milvus",
            backend_version=str(version),
            count=self.count(),
            index_spec=self._properties.get(PROPERTY_INDEX_SPEC, self._collection_config.spec),
        )

    # --- writes --------------------------------------------------------------------------------

    def upsert(self, items: Sequence[NewItem]) -> list[WriteResult]:
        self._check_open()
        prepared = [prepare_item(item, dim=self.dim, position=i) for i, item in enumerate(items)]
        if not prepared:
            return []
        latest = {item.id: item for item in prepared}  # a repeated id: the last one is stored
        with self._write_lock:
            existing = self._existing(self._name, list(latest), ["id", "created_at", "sha256"])
            written = self._crops.write_many({item.sha256: item.crop for item in latest.values()})
            now = now_epoch_us()
            rows = [
                item_row(
                    item,
                    created_at_us=int(existing[item.id]["created_at"]) if item.id in existing else now,
                    updated_at_us=now,
                )
                for item in latest.values()
            ]
            try:
                self._write_rows(self._name, rows)
            except BaseException:
                self._remove_unreferenced_crops(set(written))
                raise
            self._remove_unreferenced_crops({str(row["sha256"]) for row in existing.values()})
        return _write_results(prepared, set(existing))

    def _write_rows(self, collection: str, rows: list[dict[str, Any]]) -> None:
        # NOTE: Milvus applies one upsert request whole, but rows beyond write_batch_size go in further
        # requests. A failure between two of them leaves the earlier ones written.
        for start in range(0, len(rows), self._write_batch_size):
            chunk = rows[start : start + self._write_batch_size]
            with milvus_errors(f"upsert {len(chunk)} items into {collection!r}"):
                self._client.upsert(collection, chunk)

    def delete(self, ids: Sequence[str]) -> list[str]:
        self._check_open()
        requested = list(dict.fromkeys(validate_item_id(item_id) for item_id in ids))
        if not requested:
            return []
        with self._write_lock:
            existing = self._existing(self._name, requested, ["id", "sha256"])
            if not existing:
                return []
            present = [item_id for item_id in requested if item_id in existing]
            self._delete_ids(self._name, present)
            if self._deleted_during_reindex is not None:
                self._deleted_during_reindex.update(present)
            self._remove_unreferenced_crops({str(row["sha256"]) for row in existing.values()})
        return present

    def _delete_ids(self, collection: str, ids: Sequence[str]) -> None:
        for start in range(0, len(ids), LOOKUP_CHUNK):
            chunk = list(ids[start : start + LOOKUP_CHUNK])
            with milvus_errors(f"delete {len(chunk)} items from {collection!r}"):
                self._client.delete(collection, filter=ids_expression(chunk))

    def _existing(self, collection: str, ids: Sequence[str], fields: list[str]) -> dict[str, dict[str, Any]]:
        """Return id -> row (with `fields`) for the ids that exist in `collection`."""
        found: dict[str, dict[str, Any]] = {}
        for start in range(0, len(ids), LOOKUP_CHUNK):
            chunk = list(ids[start : start + LOOKUP_CHUNK])
            with milvus_errors(f"look up {len(chunk)} ids in {collection!r}"):
                rows = self._client.query(collection, filter=ids_expression(chunk), output_fields=fields)
            found.update({str(row["id"]): dict(row) for row in rows})
        return found

    def _remove_unreferenced_crops(self, digests: set[str]) -> None:
        # NOTE: another process that writes the same crop bytes between this check and the removal loses
        # its file, and read_crop then raises StoreCorruptError. Within one process the write lock prevents it.
        try:
            unreferenced = [
                sha for sha in sorted(digests) if self._count(self._name, f"sha256 == {quote(sha)}") == 0
            ]
            self._crops.remove(unreferenced)
        except (GalleryError, OSError):
            # An unreferenced file wastes space but loses nothing; the next write of the same bytes reuses it.
            logger.exception("removing %d unreferenced crop files failed; they stay on disk", len(digests))

    # --- reads ---------------------------------------------------------------------------------

    def get(self, item_id: str) -> GalleryItem:
        self._check_open()
        return item_from_row(self._get_row(item_id, METADATA_FIELDS))

    def get_embedding(self, item_id: str) -> np.ndarray:
        self._check_open()
        return embedding_from_row(self._get_row(item_id, ["id", "embedding"]), self.dim)

    def read_crop(self, item_id: str) -> bytes:
        self._check_open()
        sha = str(self._get_row(item_id, ["id", "sha256"])["sha256"])
        data = self._crops.read(sha)
        if data is not None:
            return data
        # The item may have been deleted or replaced while the file was read.
        if self._existing(self._name, [item_id], ["id", "sha256"]).get(item_id, {}).get("sha256") != sha:
            raise ItemNotFoundError(f"no item with id {item_id!r} in the gallery")
        raise StoreCorruptError(
            f"crop {sha} of item {item_id!r} is missing or damaged under {self._crops.root}; re-ingest the item, "
            "and check that every replica mounts the same crops directory"
        )

    def _get_row(self, item_id: str, fields: list[str]) -> dict[str, Any]:
        item_id = validate_item_id(item_id)
        # pymilvus' `get(ids=...)` writes ids into its expression unescaped, so query with a quoted literal.
        row = self._existing(self._name, [item_id], fields).get(item_id)
        if row is None:
            raise ItemNotFoundError(f"no item with id {item_id!r} in the gallery")
        return row

    def list(
        self, *, cursor: str | None = None, limit: int = 100, filters: SearchFilters | None = None
    ) -> Page:
        self._check_open()
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE_SIZE:
            raise InvalidItemError(f"limit must be an integer from 1 to {MAX_PAGE_SIZE}, got {limit!r}")
        filters = validate_filters(filters)
        after = decode_cursor(self._cursor_secret, cursor, filters) if cursor is not None else None
        rows = self._rows_after(self._name, after, limit + 1, METADATA_FIELDS, filter_expression(filters))
        items = [item_from_row(row) for row in rows[:limit]]
        next_cursor = encode_cursor(self._cursor_secret, items[-1].id, filters) if len(rows) > limit else None
        return Page(items=items, next_cursor=next_cursor)

    def _rows_after(
        self, collection: str, after: str | None, limit: int, fields: list[str], expression: str
    ) -> list[dict[str, Any]]:
        """Return up to `limit` rows with ids greater than `after`, in id order.

        `iterator=True` requests the first `limit` matches in primary-key order, which pymilvus' own query
        iterator relies on too. Milvus Lite 3.2 honours it (the listing tests check it); on a Milvus server
        it was not tested. The rows are sorted again here for the caller.
        """
        condition = combine(f"id > {quote(after)}" if after is not None else 'id != ""', expression)
        with milvus_errors(f"list items of {collection!r}"):
            rows = self._client.query(
                collection,
                filter=condition,
                output_fields=fields,
                limit=limit,
                iterator="True",
                reduce_stop_for_best="True",
            )
        return sorted((dict(row) for row in rows), key=lambda row: row["id"])

    def count(self, filters: SearchFilters | None = None) -> int:
        self._check_open()
        return self._count(self._name, filter_expression(validate_filters(filters)))

    def _count(self, collection: str, expression: str) -> int:
        with milvus_errors(f"count items of {collection!r}"):
            rows = self._client.query(collection, filter=expression, output_fields=["count(*)"])
        return int(rows[0]["count(*)"]) if rows else 0

    def camera_ids(self) -> list[str]:
        """Return the distinct camera ids, sorted.

        Milvus has no DISTINCT, so each query selects rows whose camera is not among those found so far;
        every round finds at least one new camera, so it takes at most (cameras + 1) queries.
        """
        self._check_open()
        found: set[str] = set()
        while True:
            excluded = f" and camera_id not in {quote_list(found)}" if found else ""
            with milvus_errors(f"list the cameras of {self._name!r}"):
                rows = self._client.query(
                    self._name,
                    filter=f"camera_id is not null{excluded}",
                    output_fields=["camera_id"],
                    limit=CAMERA_SCAN_ROWS,
                )
            new = {str(row["camera_id"]) for row in rows} - found
            if not new:
                return sorted(found)
            found |= new

    def search(
        self, queries: np.ndarray, *, top_k: int, filters: SearchFilters | None = None
    ) -> list[list[SearchHit]]:
        self._check_open()
        top_k = validate_top_k(top_k)
        if top_k > MAX_TOP_K:
            raise InvalidItemError(f"top_k is {top_k}; Milvus returns at most {MAX_TOP_K} hits per query")
        filters = validate_filters(filters)
        matrix = validate_queries(queries, dim=self.dim)
        if len(matrix) == 0:
            return []
        if filters is not None and filters.camera_ids is not None and not filters.camera_ids:
            return [[] for _ in range(len(matrix))]
        with milvus_errors(f"search {self._name!r}"):
            results = self._client.search(
                self._name,
                data=matrix.tolist(),
                anns_field="embedding",
                limit=top_k,
                filter=filter_expression(filters),
                output_fields=METADATA_FIELDS,
                search_params={
                    "metric_type": "IP",
                    "params": self._search_config.resolved_search_params(top_k),
                },
            )
        return [
            [
                SearchHit(item=item_from_row(hit["entity"]), score=float(hit["distance"]), rank=rank)
                for rank, hit in enumerate(hits, start=1)
            ]
            for hits in results
        ]

    def iter_crops(self, batch_size: int = 64) -> Iterator[list[tuple[str, bytes]]]:
        self._check_open()
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InvalidItemError(f"batch_size must be a positive integer, got {batch_size!r}")
        after: str | None = None
        while rows := self._rows_after(self._name, after, batch_size, ["id", "sha256"], ""):
            after = str(rows[-1]["id"])
            batch = []
            for row in rows:
                data = self._crops.read(str(row["sha256"]))
                if data is None:
                    logger.error(
                        "crop %s of item %r is missing or damaged; skipped", row["sha256"], row["id"]
                    )
                    continue
                batch.append((str(row["id"]), data))
            if batch:
                yield batch

    # --- lifecycle -----------------------------------------------------------------------------

    def flush(self) -> None:
        """Seal the data written so far into segments; bulk jobs call this when they finish."""
        self._check_open()
        with milvus_errors(f"flush {self._collection!r}"):
            self._client.flush(self._collection)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._client.close()
        if is_lite_uri(self._uri):
            release_lite(self._uri)

    def _check_open(self) -> None:
        if self._closed:
            raise GalleryError(f"the Milvus gallery {self._name!r} is closed; open it again")

    @property
    def _cursor_secret(self) -> bytes:
        return self._properties[PROPERTY_CURSOR_SECRET].encode()


def open_milvus_store(
    uri: str | None,
    *,
    model_identity: str,
    dim: int,
    crops_dir: Path,
    collection: str = DEFAULT_COLLECTION,
    token: str = "",
    collection_config: CollectionConfig | None = None,
    create: bool = True,
) -> MilvusGalleryStore:
    """Open the Milvus gallery for a model; the service's backend factory calls this for `milvus`."""
    if not uri:
        raise InvalidConfigError(
            "no Milvus URI given; set AXM_MILVUS_URI to http://host:19530 or a Milvus Lite .db path"
        )
    return MilvusGalleryStore.open(
        uri,
        model_identity=model_identity,
        dim=dim,
        crops_dir=crops_dir,
        collection=collection,
        token=token,
        collection_config=collection_config,
        create=create,
    )


def _write_results(prepared: Sequence[PreparedItem], existed: set[str]) -> list[WriteResult]:
    """Return one result per input item: "updated" when the id existed or came earlier in the call."""
    seen = set(existed)
    results = []
    for item in prepared:
        results.append(WriteResult(id=item.id, status="updated" if item.id in seen else "created"))
        seen.add(item.id)
    return results


def read_milvus_gallery_model(
    uri: str, *, collection: str = DEFAULT_COLLECTION, token: str = ""
) -> tuple[str, int]:
    """Return (model identity, dimension) recorded by the gallery `collection`, without opening it for a model.

    Raises `StoreNotFoundError` when the gallery does not exist.
    """
    client = connect(uri, token)
    if is_lite_uri(uri):
        acquire_lite(uri)
    try:
        with milvus_errors(f"describe the gallery {collection!r}"):
            if not alias_exists(client, collection):
                raise StoreNotFoundError(f"no gallery {collection!r} at {uri}")
            properties = client.describe_collection(collection).get("properties") or {}
    finally:
        client.close()
        if is_lite_uri(uri):
            release_lite(uri)
    if PROPERTY_IDENTITY not in properties or PROPERTY_DIM not in properties:
        raise StoreCorruptError(f"Milvus collection behind {collection!r} at {uri} has no gallery properties")
    return str(properties[PROPERTY_IDENTITY]), int(properties[PROPERTY_DIM])
