"""Request and response bodies of the HTTP API, with the examples shown in the OpenAPI schema."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from urllib.parse import quote

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from index.store import GalleryItem, SearchFilters, SearchHit

EXAMPLE_ID = "cam3/2026-12-01T10:00:00Z/track17"
EXAMPLE_IDENTITY = "3f9a1c0d5e7b2a64"
EXAMPLE_TIME = "2026-12-01T10:00:00Z"


def image_url(item_id: str, root_path: str = "") -> str:
    """Return the path of an item's crop; each id segment is percent-encoded and `/` kept."""
    return f"{root_path}/gallery/{quote(item_id, safe='/')}/image"


class ErrorBody(BaseModel):
    """Body of every error response."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "error": "invalid_top_k",
                    "detail": "top_k must be between 1 and 1000 (AXM_MAX_TOP_K); got 0",
                }
            ]
        }
    )

    error: str = Field(description="Stable machine-readable code, for example not_found or image_too_large.")
    detail: str = Field(description="Message for people: the value, the limit and what to do.")


class SearchFiltersBody(BaseModel):
    """Restrictions applied before ranking; a filtered search still returns top_k matches when enough exist."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"camera_ids": ["cam3"], "captured_from": EXAMPLE_TIME, "captured_to": "2026-12-01T18:00:00Z"}
            ]
        },
    )

    camera_ids: list[str] | None = Field(None, description="Keep items of these cameras only.")
    captured_from: AwareDatetime | None = Field(
        None, description="Earliest capture time, inclusive, with timezone."
    )
    captured_to: AwareDatetime | None = Field(
        None, description="Latest capture time, inclusive, with timezone."
    )

    @model_validator(mode="after")
    def _check_range(self) -> SearchFiltersBody:
        if self.captured_from and self.captured_to and self.captured_from > self.captured_to:
            raise ValueError(
                f"captured_from ({self.captured_from.isoformat()}) is after captured_to "
                f"({self.captured_to.isoformat()}); swap them"
            )
        return self

    def to_filters(self) -> SearchFilters | None:
        """Return the gallery's filter type, or None when nothing is restricted."""
        filters = SearchFilters(
            camera_ids=frozenset(self.camera_ids) if self.camera_ids is not None else None,
            captured_from=self.captured_from,
            captured_to=self.captured_to,
        )
        return None if filters.is_empty else filters


class SearchRequest(BaseModel):
    """A text query."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "text": "a woman in a red coat with a black backpack and white sneakers",
                    "top_k": 10,
                    "filters": {"camera_ids": ["cam3"]},
                }
            ]
        },
    )

    text: str = Field(
        description="Description of the person. Empty, blank or control-character text is rejected (422); "
        "text longer than AXM_MAX_TEXT_CHARS characters is rejected (413); text longer than the model's "
        "token limit is truncated and flagged."
    )
    top_k: int = Field(10, description="Number of results, 1..AXM_MAX_TOP_K (default 10).")
    filters: SearchFiltersBody | None = Field(None, description="Optional camera and time restrictions.")


class SearchResult(BaseModel):
    """One ranked gallery item."""

    id: str
    rank: int = Field(description="Position in the ranking, starting at 1.")
    score: float = Field(description="Cosine similarity between query and item embeddings; bigger is better.")
    camera_id: str | None
    captured_at: datetime | None
    source: str | None = Field(description="File name the crop was uploaded or ingested from.")
    width: int
    height: int
    metadata: dict[str, Any]
    image_url: str = Field(description="Path of the crop: GET it with the same API key.")

    @classmethod
    def from_hit(cls, hit: SearchHit, root_path: str = "") -> SearchResult:
        item = hit.item
        return cls(
            id=item.id,
            rank=hit.rank,
            score=hit.score,
            camera_id=item.camera_id,
            captured_at=item.captured_at,
            source=item.source,
            width=item.width,
            height=item.height,
            metadata=item.extra,
            image_url=image_url(item.id, root_path),
        )


class SearchResponse(BaseModel):
    """Ranked results of one query."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "results": [
                        {
                            "id": EXAMPLE_ID,
                            "rank": 1,
                            "score": 0.62,
                            "camera_id": "cam3",
                            "captured_at": EXAMPLE_TIME,
                            "source": "track17.jpg",
                            "width": 64,
                            "height": 160,
                            "metadata": {"site": "north gate"},
                            "image_url": f"/gallery/{EXAMPLE_ID}/image",
                        }
                    ],
                    "tokens_used": 17,
                    "truncated": False,
                    "took_ms": 21.4,
                    "model_identity": EXAMPLE_IDENTITY,
                }
            ]
        }
    )

    results: list[SearchResult]
    tokens_used: int = Field(description="Tokens of the description the model read (0 for image queries).")
    truncated: bool = Field(description="True when the description was longer than the model's token limit.")
    took_ms: float = Field(description="Time spent embedding and searching, in milliseconds.")
    model_identity: str


class ItemSpec(BaseModel):
    """Per-file metadata of an upload, overriding the request-wide defaults."""

    model_config = ConfigDict(extra="forbid")

    id: str | None = None
    camera_id: str | None = None
    captured_at: AwareDatetime | None = None
    metadata: dict[str, Any] | None = None


class IngestResult(BaseModel):
    """Outcome of one uploaded file."""

    index: int = Field(description="Position of the file in the request, from 0.")
    filename: str | None
    id: str | None = Field(
        description="Item id: the given one, or the sha256 of the bytes when none was given."
    )
    status: Literal["created", "updated", "rejected"]
    error: ErrorBody | None = Field(description="Why the file was rejected; null otherwise.")


class IngestResponse(BaseModel):
    """Per-file outcomes of an upload and their totals."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "results": [
                        {
                            "index": 0,
                            "filename": "track17.jpg",
                            "id": EXAMPLE_ID,
                            "status": "created",
                            "error": None,
                        },
                        {
                            "index": 1,
                            "filename": "frame.png",
                            "id": None,
                            "status": "rejected",
                            "error": {
                                "error": "image_too_small",
                                "detail": "image is 1×1 pixels; the minimum crop is 16×32 pixels",
                            },
                        },
                    ],
                    "created": 1,
                    "updated": 0,
                    "rejected": 1,
                }
            ]
        }
    )

    results: list[IngestResult]
    created: int
    updated: int
    rejected: int


class GalleryItemBody(BaseModel):
    """A stored item's metadata."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": EXAMPLE_ID,
                    "camera_id": "cam3",
                    "captured_at": EXAMPLE_TIME,
                    "source": "track17.jpg",
                    "width": 64,
                    "height": 160,
                    "sha256": "9b74c9897bac770ffc029102a200c5de" * 2,
                    "metadata": {"site": "north gate"},
                    "created_at": EXAMPLE_TIME,
                    "updated_at": EXAMPLE_TIME,
                    "image_url": f"/gallery/{EXAMPLE_ID}/image",
                }
            ]
        }
    )

    id: str
    camera_id: str | None
    captured_at: datetime | None
    source: str | None
    width: int
    height: int
    sha256: str = Field(description="Hex sha256 of the crop bytes.")
    metadata: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    image_url: str

    @classmethod
    def from_item(cls, item: GalleryItem, root_path: str = "") -> GalleryItemBody:
        return cls(
            id=item.id,
            camera_id=item.camera_id,
            captured_at=item.captured_at,
            source=item.source,
            width=item.width,
            height=item.height,
            sha256=item.sha256,
            metadata=item.extra,
            created_at=item.created_at,
            updated_at=item.updated_at,
            image_url=image_url(item.id, root_path),
        )


class GalleryPage(BaseModel):
    """One page of the gallery in id order."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"items": [], "next_cursor": None}]})

    items: list[GalleryItemBody]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last page.")


class CameraCount(BaseModel):
    """Items of one camera."""

    camera_id: str
    count: int


class GalleryStats(BaseModel):
    """Size of the gallery and the model it was built with."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "count": 332,
                    "cameras": [{"camera_id": "A", "count": 166}, {"camera_id": "B", "count": 166}],
                    "model_identity": EXAMPLE_IDENTITY,
                    "dim": 512,
                    "backend": "faiss",
                }
            ]
        }
    )

    count: int
    cameras: list[CameraCount]
    model_identity: str
    dim: int
    backend: str


class HealthBody(BaseModel):
    """The process is alive."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"status": "alive"}]})

    status: Literal["alive"] = "alive"


class ReadyBody(BaseModel):
    """The model and the gallery are loaded and a warm-up inference has run."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "status": "ready",
                    "model_identity": EXAMPLE_IDENTITY,
                    "dim": 512,
                    "gallery_size": 332,
                    "backend": "faiss",
                    "max_text_tokens": 64,
                }
            ]
        }
    )

    status: Literal["ready"] = "ready"
    model_identity: str
    dim: int
    gallery_size: int
    backend: str
    max_text_tokens: int = Field(
        description="Tokens of a description the model reads; longer ones are truncated."
    )


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """Return the OpenAPI `responses` entries of the error statuses a route can return."""
    descriptions = {
        401: "Missing or wrong X-API-Key.",
        403: "Read-only API key on a write route.",
        404: "Unknown id.",
        409: "The gallery was built with another model.",
        413: "A size limit was exceeded.",
        415: "Unsupported image or content type.",
        422: "Invalid input.",
        503: "Model or gallery not ready.",
    }
    return {status: {"model": ErrorBody, "description": descriptions[status]} for status in statuses}
