"""Liveness, readiness and Prometheus metrics; all three are open (no API key)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from service.errors import NotReadyError, describe
from service.metrics import CONTENT_TYPE
from service.schemas import HealthBody, ReadyBody, error_responses
from service.state import StateDep

router = APIRouter(tags=["health"])


@router.get(
    "/health",
    response_model=HealthBody,
    summary="Liveness",
    description="Returns 200 as soon as the process serves HTTP, before the model is loaded. No API key.",
)
async def health() -> HealthBody:
    return HealthBody()


@router.get(
    "/ready",
    response_model=ReadyBody,
    summary="Readiness",
    description=(
        "Returns 200 once the model and the gallery are loaded and one warm-up inference has run; 503 with the "
        "error body before, or when loading failed (the detail names the cause). No API key."
    ),
    responses=error_responses(503),
)
async def ready(state: StateDep) -> ReadyBody:
    if state.engine is None:
        if state.load_error is not None:
            cause = describe(state.load_error)
            raise NotReadyError(f"the service failed to load ({cause.code}): {cause.detail}")
        raise NotReadyError("the model and the gallery are still loading; retry in a few seconds")
    engine = state.engine
    return ReadyBody(
        model_identity=engine.model_identity,
        dim=engine.dim,
        gallery_size=await state.run(engine.store.count),
        backend=engine.backend,
        max_text_tokens=engine.max_text_tokens,
    )


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    description=(
        "Request counts and latency per route template, model forward time per modality, gallery search time "
        "and gallery size, in the Prometheus text format. No API key."
    ),
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE: {"example": "axm_gallery_items 332.0\n"}}}},
)
async def metrics(state: StateDep) -> Response:
    body = await state.run(state.metrics.render)
    return Response(content=body, media_type=CONTENT_TYPE)
