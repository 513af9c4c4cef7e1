"""The Milvus collection of a gallery: its schema, its properties, its rows and its filter expressions.

One collection contains one gallery generation. Its fields:

| field         | type              | contents                                                    |
|---------------|-------------------|-------------------------------------------------------------|
| `id`          | VARCHAR, primary  | the external id                                             |
| `embedding`   | FLOAT_VECTOR(D)   | the L2-normalised embedding; searched by inner product (IP) |
| `camera_id`   | VARCHAR, nullable | camera label                                                |
| `captured_at` | INT64, nullable   | capture time, microseconds since the Unix epoch (UTC)       |
| `source`      | VARCHAR, nullable | where the crop came from (file name, URL)                   |
| `width`       | INT32             | crop width in pixels                                        |
| `height`      | INT32             | crop height in pixels                                       |
| `sha256`      | VARCHAR(64)       | hex digest of the crop bytes, which name the file on disk   |
| `extra`       | JSON              | the client's metadata object                                |
| `created_at`  | INT64             | first write, microseconds since the epoch                   |
| `updated_at`  | INT64             | last write, microseconds since the epoch                    |

Collection properties (string key-value pairs stored by Milvus) record what built the gallery:
`axm.model_identity`, `axm.dim`, `axm.schema_version`, `axm.generation`, `axm.index_spec` and
`axm.cursor_secret`.
Nullable fields need Milvus 2.5 or newer.

Filter expressions use Milvus' boolean syntax. Strings are written as double-quoted literals with
backslash escapes; ids and labels never contain control characters (`index.validation` rejects
them), so only the backslash and the double quote need escaping.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pymilvus import DataType, MilvusClient

from index.store import MAX_ID_LENGTH, SCHEMA_VERSION, GalleryItem, InvalidConfigError, SearchFilters
from index.validation import PreparedItem, from_epoch_us, to_epoch_us

# VARCHAR max_length is sized for 4 bytes per character, the most UTF-8 needs, in case Milvus counts bytes.
MAX_TEXT_BYTES = 4 * MAX_ID_LENGTH
# Largest top_k of one Milvus search ("Milvus Limits", milvus.io/docs/limitations.md: topk 16,384).
MAX_TOP_K = 16_384

METADATA_FIELDS = [
    "id",
    "camera_id",
    "captured_at",
    "source",
    "width",
    "height",
    "sha256",
    "extra",
    "created_at",
    "updated_at",
]

PROPERTY_IDENTITY = "axm.model_identity"
PROPERTY_DIM = "axm.dim"
PROPERTY_SCHEMA = "axm.schema_version"
PROPERTY_GENERATION = "axm.generation"
PROPERTY_CURSOR_SECRET = "axm.cursor_secret"
PROPERTY_INDEX_SPEC = "axm.index_spec"

# Vector index types this store builds, with their default build and search parameters.
# FLAT is exact. HNSW and IVF_FLAT are approximate; Milvus Lite 3.2 loses results with them under
# selective filters, so tests use FLAT.
INDEX_DEFAULTS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "FLAT": ({}, {}),
    "HNSW": ({"M": 16, "efConstruction": 200}, {"ef": 128}),
    "IVF_FLAT": ({"nlist": 1024}, {"nprobe": 32}),
    "AUTOINDEX": ({}, {}),
}


@dataclass(frozen=True)
class CollectionConfig:
    """How gallery collections are built: the vector index (Milvus index type, build and search
    parameters) and the number of shards.

    Empty parameter dicts take the defaults of `INDEX_DEFAULTS`. An HNSW search raises `ef` to top_k
    when top_k is larger, because Milvus requires ef >= top_k. Shards spread writes over Milvus'
    write channels by a hash of the id. The shard count is fixed when a collection is created, so a
    change applies from the next `reindex` on; Milvus allows at most 16 shards per collection.
    """

    index_type: str = "FLAT"
    build_params: Mapping[str, Any] | None = None
    search_params: Mapping[str, Any] | None = None
    num_shards: int = 1

    def __post_init__(self) -> None:
        if self.index_type not in INDEX_DEFAULTS:
            raise InvalidConfigError(
                f"Milvus index type {self.index_type!r} is not supported; use one of {sorted(INDEX_DEFAULTS)}"
            )
        if (
            isinstance(self.num_shards, bool)
            or not isinstance(self.num_shards, int)
            or not 1 <= self.num_shards <= 16
        ):
            raise InvalidConfigError(f"num_shards must be an integer from 1 to 16, got {self.num_shards!r}")

    @property
    def spec(self) -> str:
        """A short description for the manifest, such as `FLAT/IP` or `HNSW(M=16,efConstruction=200)/IP`."""
        params = self.resolved_build_params()
        inner = ",".join(f"{key}={value}" for key, value in sorted(params.items()))
        return f"{self.index_type}({inner})/IP" if inner else f"{self.index_type}/IP"

    def resolved_build_params(self) -> dict[str, Any]:
        return dict(
            self.build_params if self.build_params is not None else INDEX_DEFAULTS[self.index_type][0]
        )

    def resolved_search_params(self, top_k: int) -> dict[str, Any]:
        params = dict(
            self.search_params if self.search_params is not None else INDEX_DEFAULTS[self.index_type][1]
        )
        if self.index_type == "HNSW":
            params["ef"] = max(int(params.get("ef", 0)), top_k)
        return params


def build_schema(dim: int) -> Any:
    """Return the collection schema of a gallery with `dim`-dimensional embeddings."""
    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=MAX_TEXT_BYTES)
    schema.add_field("embedding", DataType.FLOAT_VECTOR, dim=dim)
    schema.add_field("camera_id", DataType.VARCHAR, max_length=MAX_TEXT_BYTES, nullable=True)
    schema.add_field("captured_at", DataType.INT64, nullable=True)
    schema.add_field("source", DataType.VARCHAR, max_length=MAX_TEXT_BYTES, nullable=True)
    schema.add_field("width", DataType.INT32)
    schema.add_field("height", DataType.INT32)
    schema.add_field("sha256", DataType.VARCHAR, max_length=64)
    schema.add_field("extra", DataType.JSON)
    schema.add_field("created_at", DataType.INT64)
    schema.add_field("updated_at", DataType.INT64)
    return schema


def build_index_params(client: MilvusClient, config: CollectionConfig) -> Any:
    """Return the index parameters: the vector index by inner product and an inverted index on camera_id."""
    params = client.prepare_index_params()
    params.add_index(
        "embedding", index_type=config.index_type, metric_type="IP", params=config.resolved_build_params()
    )
    params.add_index("camera_id", index_type="INVERTED")
    return params


def new_properties(
    *, model_identity: str, dim: int, generation: int, index_spec: str, cursor_secret: str | None = None
) -> dict[str, str]:
    """Return the properties of a new gallery collection; the cursor secret is kept across reindexing."""
    return {
        PROPERTY_IDENTITY: model_identity,
        PROPERTY_DIM: str(dim),
        PROPERTY_SCHEMA: str(SCHEMA_VERSION),
        PROPERTY_GENERATION: str(generation),
        PROPERTY_INDEX_SPEC: index_spec,
        PROPERTY_CURSOR_SECRET: cursor_secret or secrets.token_hex(32),
    }


def item_row(item: PreparedItem, *, created_at_us: int, updated_at_us: int) -> dict[str, Any]:
    """Return the Milvus row of a validated item."""
    return {
        "id": item.id,
        "embedding": item.embedding.tolist(),
        "camera_id": item.camera_id,
        "captured_at": item.captured_at_us,
        "source": item.source,
        "width": item.width,
        "height": item.height,
        "sha256": item.sha256,
        "extra": json.loads(item.extra_json),
        "created_at": created_at_us,
        "updated_at": updated_at_us,
    }


def item_from_row(row: Mapping[str, Any]) -> GalleryItem:
    """Convert a row with the `METADATA_FIELDS` to a `GalleryItem`."""
    extra = row.get("extra")
    return GalleryItem(
        id=str(row["id"]),
        camera_id=row.get("camera_id"),
        captured_at=from_epoch_us(row.get("captured_at")),
        source=row.get("source"),
        width=int(row["width"]),
        height=int(row["height"]),
        sha256=str(row["sha256"]),
        extra=dict(extra) if isinstance(extra, dict) else {},
        created_at=from_epoch_us(int(row["created_at"])),
        updated_at=from_epoch_us(int(row["updated_at"])),
    )


def embedding_from_row(row: Mapping[str, Any], dim: int) -> np.ndarray:
    """Return the row's embedding as a float32 (dim,) array."""
    vector = np.asarray(row["embedding"], dtype=np.float32)
    return vector.reshape(dim)


def quote(value: str) -> str:
    """Return `value` as a Milvus string literal: double quotes, with backslash and quote escaped."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def quote_list(values: Iterable[str]) -> str:
    """Return a Milvus list literal of strings, sorted so equal sets give equal expressions."""
    return "[" + ", ".join(quote(value) for value in sorted(values)) + "]"


def filter_expression(filters: SearchFilters | None) -> str:
    """Return the boolean expression selecting items that match `filters`; empty for no filter.

    An item without `captured_at` stores null, and a comparison with null is false, so such an item
    fails any time bound, as `SearchFilters` specifies.
    NOTE: the tests check this on Milvus Lite only, not on a Milvus server.
    """
    if filters is None or filters.is_empty:
        return ""
    clauses: list[str] = []
    if filters.camera_ids is not None:
        clauses.append(f"camera_id in {quote_list(filters.camera_ids)}")
    start = to_epoch_us(filters.captured_from, field_name="captured_from")
    end = to_epoch_us(filters.captured_to, field_name="captured_to")
    if start is not None:
        clauses.append(f"captured_at >= {start}")
    if end is not None:
        clauses.append(f"captured_at <= {end}")
    return " and ".join(clauses)


def combine(*expressions: str) -> str:
    """Join non-empty expressions with `and`, each in parentheses."""
    parts = [expression for expression in expressions if expression]
    if len(parts) == 1:
        return parts[0]
    return " and ".join(f"({part})" for part in parts)


def ids_expression(ids: Sequence[str]) -> str:
    """Return the expression selecting the given ids."""
    return f"id in {quote_list(ids)}"


def check_model(model_identity: object, dim: object) -> None:
    """Raise `InvalidConfigError` unless `model_identity` is a non-empty string and `dim` a positive int."""
    if not isinstance(model_identity, str) or not model_identity:
        raise InvalidConfigError(f"model_identity must be a non-empty string, got {model_identity!r}")
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise InvalidConfigError(f"dim must be a positive integer, got {dim!r}")
