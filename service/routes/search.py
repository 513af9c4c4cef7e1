"""Search routes: by description (JSON) and by image (an uploaded probe or a gallery item)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Request, UploadFile
from pydantic import ValidationError

from service.auth import ReadAccess
from service.engine import SearchOutcome
from service.errors import InvalidRequestError, format_validation_errors
from service.limits import check_file_size
from service.schemas import SearchFiltersBody, SearchRequest, SearchResponse, SearchResult, error_responses
from service.state import EngineDep, SettingsDep, StateDep

router = APIRouter(tags=["search"])


def _response(outcome: SearchOutcome, model_identity: str, root_path: str) -> SearchResponse:
    return SearchResponse(
        results=[SearchResult.from_hit(hit, root_path) for hit in outcome.hits],
        tokens_used=outcome.tokens_used,
        truncated=outcome.truncated,
        took_ms=round(outcome.took_ms, 3),
        model_identity=model_identity,
    )


def _parse_filters(raw: str | None) -> SearchFiltersBody | None:
    if raw is None or not raw.strip():
        return None
    try:
        return SearchFiltersBody.model_validate_json(raw)
    except ValidationError as e:
        raise InvalidRequestError(
            f"filters is not a valid filter object: {format_validation_errors(e.errors())}"
        ) from e


@router.post(
    "/search",
    response_model=SearchResponse,
    dependencies=[ReadAccess],
    summary="Search by description",
    description=(
        "Embeds the description and ranks the gallery by cosine similarity, best first. A description longer "
        "than the model's token limit is truncated and `truncated` is true; `tokens_used` says how many tokens "
        "the model read. Filters restrict the gallery before ranking."
    ),
    responses=error_responses(401, 413, 422, 409, 503),
)
async def search_text(
    body: SearchRequest, request: Request, state: StateDep, engine: EngineDep
) -> SearchResponse:
    filters = body.filters.to_filters() if body.filters else None
    outcome = await state.run(engine.search_text, body.text, top_k=body.top_k, filters=filters)
    return _response(outcome, engine.model_identity, request.scope.get("root_path", ""))


@router.post(
    "/search/image",
    response_model=SearchResponse,
    dependencies=[ReadAccess],
    summary="Search by image",
    description=(
        "Ranks the gallery by similarity to a probe image: either an uploaded `file`, decoded and embedded like "
        "an upload, or the `id` of a gallery item, whose stored embedding is used (the item itself ranks "
        "first). Send exactly one of them. `filters` is a JSON string with camera_ids, captured_from and "
        "captured_to. `tokens_used` is 0."
    ),
    responses=error_responses(401, 404, 413, 415, 422, 409, 503),
)
async def search_image(
    request: Request,
    state: StateDep,
    engine: EngineDep,
    settings: SettingsDep,
    file: Annotated[UploadFile | None, File(description="Probe image.")] = None,
    item_id: Annotated[
        str | None,
        Form(alias="id", description="Id of a gallery item to use as the probe.", examples=["cam3/track17"]),
    ] = None,
    top_k: Annotated[int, Form(description="Number of results, 1..AXM_MAX_TOP_K.")] = 10,
    filters: Annotated[
        str | None, Form(description="JSON filter object.", examples=['{"camera_ids": ["cam3"]}'])
    ] = None,
) -> SearchResponse:
    if (file is None) == (item_id is None):
        raise InvalidRequestError("send exactly one of `file` (a probe image) and `id` (a gallery item)")
    parsed = _parse_filters(filters)
    store_filters = parsed.to_filters() if parsed else None

    if file is not None:
        check_file_size(file.size or 0, max_bytes=settings.max_file_bytes, filename=file.filename)
        data = await file.read()
        outcome = await state.run(
            engine.search_image_bytes, data, top_k=top_k, filters=store_filters, filename=file.filename
        )
    else:
        outcome = await state.run(engine.search_item, item_id, top_k=top_k, filters=store_filters)
    return _response(outcome, engine.model_identity, request.scope.get("root_path", ""))
