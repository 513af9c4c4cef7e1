"""Gallery routes: upload crops, list, read metadata and crops, delete, statistics.

Ids may contain `/`, so item routes use the `path` converter. Registration order matters:
`/gallery/stats` and `/gallery/{item_id:path}/image` come before `/gallery/{item_id:path}`, and
ids that would collide with them are rejected at upload (see `service.limits`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Query, Request, UploadFile
from fastapi.responses import Response
from pydantic import AwareDatetime, TypeAdapter, ValidationError

from index.store import ItemNotFoundError, SearchFilters
from service import jobs
from service.auth import ReadAccess, WriteAccess
from service.errors import InvalidRequestError, format_validation_errors
from service.limits import check_file_count, file_too_large
from service.schemas import (
    CameraCount,
    ErrorBody,
    GalleryItemBody,
    GalleryPage,
    GalleryStats,
    IngestResponse,
    IngestResult,
    ItemSpec,
    error_responses,
)
from service.state import EngineDep, SettingsDep, StateDep

logger = logging.getLogger(__name__)

router = APIRouter(tags=["gallery"])

ITEM_SPECS = TypeAdapter(list[ItemSpec])
# Leading bytes of the formats `model.preprocess` accepts, to label stored crops with a Content-Type.
MEDIA_SIGNATURES = (
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"BM", "image/bmp"),
    (b"II*\x00", "image/tiff"),
    (b"MM\x00*", "image/tiff"),
)


def media_type_of(crop: bytes) -> str:
    """Return the Content-Type of stored crop bytes from their leading signature."""
    if crop[:4] == b"RIFF" and crop[8:12] == b"WEBP":
        return "image/webp"
    for signature, media_type in MEDIA_SIGNATURES:
        if crop.startswith(signature):
            return media_type
    return "application/octet-stream"


def _parse_metadata(raw: str | None) -> dict[str, Any]:
    if raw is None or not raw.strip():
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as e:
        raise InvalidRequestError(
            f"metadata is not valid JSON ({e.msg} at position {e.pos}); send a JSON object"
        ) from e
    if not isinstance(value, dict):
        raise InvalidRequestError(f"metadata must be a JSON object, got a JSON {type(value).__name__}")
    return value


def _parse_item_specs(raw: str | None, file_count: int) -> list[ItemSpec]:
    if raw is None or not raw.strip():
        return [ItemSpec() for _ in range(file_count)]
    try:
        specs = ITEM_SPECS.validate_json(raw)
    except ValidationError as e:
        raise InvalidRequestError(
            f"items is not a valid JSON array of item objects: {format_validation_errors(e.errors())}"
        ) from e
    if len(specs) != file_count:
        raise InvalidRequestError(
            f"items has {len(specs)} entries but the request carries {file_count} files; send one per file"
        )
    return specs


def _ingest_items(
    files: list[UploadFile],
    contents: list[bytes],
    *,
    ids: list[str] | None,
    camera_id: str | None,
    captured_at: datetime | None,
    metadata: dict[str, Any],
    specs: list[ItemSpec],
) -> list[jobs.IngestItem]:
    items = []
    for index, (upload, data) in enumerate(zip(files, contents, strict=True)):
        spec = specs[index]
        item_id = spec.id
        if item_id is None and ids:
            item_id = ids[index]
        items.append(
            jobs.IngestItem(
                data=data,
                filename=upload.filename,
                id=item_id,
                camera_id=spec.camera_id if spec.camera_id is not None else camera_id,
                captured_at=spec.captured_at if spec.captured_at is not None else captured_at,
                metadata={**metadata, **(spec.metadata or {})},
            )
        )
    return items


def _ingest_response(outcomes: list[jobs.IngestOutcome]) -> IngestResponse:
    results = [
        IngestResult(
            index=outcome.index,
            filename=outcome.filename,
            id=outcome.id,
            status=outcome.status,
            error=ErrorBody(error=outcome.error.code, detail=outcome.error.detail) if outcome.error else None,
        )
        for outcome in outcomes
    ]
    return IngestResponse(
        results=results,
        created=sum(result.status == "created" for result in results),
        updated=sum(result.status == "updated" for result in results),
        rejected=sum(result.status == "rejected" for result in results),
    )


@router.post(
    "/gallery",
    response_model=IngestResponse,
    dependencies=[WriteAccess],
    summary="Add or update crops",
    description=(
        "Upload one or many person crops in the multipart field `files`. Each file is decoded, embedded and "
        "stored; each gets its own result, so one bad file never fails the others (status `rejected` with the "
        "error). Without an id, the id is the sha256 of the file's bytes, so uploading the same bytes again "
        "updates the item. `ids` (repeated, one per file), `camera_id`, `captured_at` (ISO 8601 with timezone) "
        "and `metadata` (a JSON object) apply to every file; `items`, a JSON array with one "
        "`{id, camera_id, captured_at, metadata}` per file, overrides them per file (metadata keys merge). "
        "Ids may contain `/` but must not be `stats`, end with the segment `image`, or contain empty, `.` or "
        "`..` segments. Write key required."
    ),
    responses=error_responses(401, 403, 413, 422, 409, 503),
)
async def upload_crops(
    state: StateDep,
    engine: EngineDep,
    settings: SettingsDep,
    files: Annotated[list[UploadFile], File(description="Crop images (JPEG, PNG, WebP, BMP, TIFF, GIF).")],
    ids: Annotated[list[str] | None, Form(description="Item ids, one per file, in file order.")] = None,
    camera_id: Annotated[str | None, Form(description="Camera of every file.", examples=["cam3"])] = None,
    captured_at: Annotated[
        AwareDatetime | None,
        Form(
            description="Capture time of every file, ISO 8601 with timezone.",
            examples=["2026-12-01T10:00:00Z"],
        ),
    ] = None,
    metadata: Annotated[
        str | None,
        Form(description="JSON object stored with every file.", examples=['{"site": "north gate"}']),
    ] = None,
    items: Annotated[
        str | None,
        Form(
            description="JSON array, one object per file: {id, camera_id, captured_at, metadata}.",
            examples=['[{"id": "cam3/track17"}]'],
        ),
    ] = None,
) -> IngestResponse:
    check_file_count(len(files), max_files=settings.max_files_per_request)
    if ids is not None and len(ids) != len(files):
        raise InvalidRequestError(
            f"ids has {len(ids)} values but the request carries {len(files)} files; send one per file"
        )
    specs = _parse_item_specs(items, len(files))
    defaults = _parse_metadata(metadata)

    # Oversized files are not read into memory: they are rejected from their size alone.
    oversized = {index for index, upload in enumerate(files) if (upload.size or 0) > settings.max_file_bytes}
    contents = [b"" if index in oversized else await upload.read() for index, upload in enumerate(files)]
    ingest_items = _ingest_items(
        files, contents, ids=ids, camera_id=camera_id, captured_at=captured_at, metadata=defaults, specs=specs
    )
    outcomes = [
        jobs.rejected_outcome(
            index,
            ingest_items[index],
            ingest_items[index].id,
            file_too_large(
                files[index].size or 0, max_bytes=settings.max_file_bytes, filename=files[index].filename
            ),
        )
        for index in sorted(oversized)
    ]

    accepted = [index for index in range(len(files)) if index not in oversized]
    settled = await state.run(jobs.ingest, engine, [ingest_items[index] for index in accepted])
    outcomes.extend(dataclasses.replace(outcome, index=accepted[outcome.index]) for outcome in settled)
    return _ingest_response(sorted(outcomes, key=lambda outcome: outcome.index))


@router.get(
    "/gallery",
    response_model=GalleryPage,
    dependencies=[ReadAccess],
    summary="List items",
    description=(
        "Items in id order, `limit` at a time (at most AXM_MAX_LIST_LIMIT). Pass `next_cursor` back as `cursor` "
        "for the next page. Filters: `camera_id` (repeatable), `captured_from` and `captured_to` (inclusive, "
        "ISO 8601 with timezone)."
    ),
    responses=error_responses(401, 422, 503),
)
async def list_items(
    request: Request,
    state: StateDep,
    engine: EngineDep,
    settings: SettingsDep,
    cursor: Annotated[str | None, Query(description="Opaque cursor from the previous page.")] = None,
    limit: Annotated[int, Query(ge=1, description="Items per page.")] = 100,
    camera_id: Annotated[list[str] | None, Query(description="Keep items of these cameras.")] = None,
    captured_from: Annotated[
        AwareDatetime | None, Query(description="Earliest capture time, inclusive.")
    ] = None,
    captured_to: Annotated[AwareDatetime | None, Query(description="Latest capture time, inclusive.")] = None,
) -> GalleryPage:
    if limit > settings.max_list_limit:
        raise InvalidRequestError(
            f"limit must be at most {settings.max_list_limit} (AXM_MAX_LIST_LIMIT); got {limit}"
        )
    filters = SearchFilters(
        camera_ids=frozenset(camera_id) if camera_id else None,
        captured_from=captured_from,
        captured_to=captured_to,
    )
    page = await state.run(
        engine.store.list, cursor=cursor, limit=limit, filters=None if filters.is_empty else filters
    )
    root_path = request.scope.get("root_path", "")
    return GalleryPage(
        items=[GalleryItemBody.from_item(item, root_path) for item in page.items],
        next_cursor=page.next_cursor,
    )


def _stats(engine: Any) -> GalleryStats:
    store = engine.store
    cameras = [
        CameraCount(camera_id=camera, count=store.count(SearchFilters(camera_ids=frozenset({camera}))))
        for camera in store.camera_ids()
    ]
    manifest = store.manifest
    return GalleryStats(
        count=store.count(),
        cameras=cameras,
        model_identity=manifest.model_identity,
        dim=manifest.dim,
        backend=manifest.backend,
    )


@router.get(
    "/gallery/stats",
    response_model=GalleryStats,
    dependencies=[ReadAccess],
    summary="Gallery statistics",
    description="Number of items, items per camera, and the model identity, dimension and backend of the gallery.",
    responses=error_responses(401, 503),
)
async def gallery_stats(state: StateDep, engine: EngineDep) -> GalleryStats:
    return await state.run(_stats, engine)


@router.get(
    "/gallery/{item_id:path}/image",
    dependencies=[ReadAccess],
    summary="Crop bytes",
    description="The crop exactly as uploaded, with its Content-Type (image/jpeg, image/png, ...).",
    response_class=Response,
    responses={
        200: {"content": {"image/jpeg": {}, "image/png": {}}, "description": "The crop."},
        **error_responses(401, 404, 503),
    },
)
async def item_image(item_id: str, state: StateDep, engine: EngineDep) -> Response:
    crop = await state.run(engine.store.read_crop, item_id)
    return Response(content=crop, media_type=media_type_of(crop))


@router.get(
    "/gallery/{item_id:path}",
    response_model=GalleryItemBody,
    dependencies=[ReadAccess],
    summary="Item metadata",
    description="Metadata of one item. Ids may contain `/`: GET /gallery/cam3/2026-12-01T10:00:00Z/track17.",
    responses=error_responses(401, 404, 503),
)
async def get_item(item_id: str, request: Request, state: StateDep, engine: EngineDep) -> GalleryItemBody:
    item = await state.run(engine.store.get, item_id)
    return GalleryItemBody.from_item(item, request.scope.get("root_path", ""))


@router.delete(
    "/gallery/{item_id:path}",
    status_code=204,
    response_class=Response,
    dependencies=[WriteAccess],
    summary="Delete an item",
    description="Removes the item, its embedding and (when no other item shares it) its crop. 404 for an unknown id. Write key required.",
    responses=error_responses(401, 403, 404, 503),
)
async def delete_item(item_id: str, state: StateDep, engine: EngineDep) -> Response:
    deleted = await state.run(engine.store.delete, [item_id])
    if not deleted:
        raise ItemNotFoundError(f"id {item_id!r} is not in the gallery")
    logger.info("item %s deleted", item_id)
    return Response(status_code=204)
