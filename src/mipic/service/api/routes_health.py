"""Liveness, readiness, model info and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Response

from mipic.service.api.deps import EngineDep, MetricsDep, SettingsDep
from mipic.service.api.routes_budgets import budget_entries, exit_space_info
from mipic.service.api.schemas import BudgetInfo, HeadsInfo, InfoResponse
from mipic.service.engine.errors import NotReady

router = APIRouter(tags=["health"])


@router.get("/health")
async def health() -> dict[str, str]:
    """Liveness: the process and its event loop answer."""
    return {"status": "ok"}


@router.get("/ready")
async def ready(engine: EngineDep) -> dict[str, str]:
    """Readiness: a model is loaded and warmed, and the server is not draining."""
    if not engine.ready:
        raise NotReady("model is loading or the server is draining")
    return {"status": "ready", "model": engine.model.model_id}


@router.get("/info", response_model=InfoResponse)
async def info(engine: EngineDep, settings: SettingsDep) -> InfoResponse:
    model = engine.model
    m = model.manifest
    return InfoResponse(
        model=m.model_id,
        name=m.name,
        version=m.version,
        architecture=m.architecture,
        hidden_size=m.hidden_size,
        num_layers=m.num_layers,
        dims=m.dims,
        layers=m.layers,
        trained_budgets=[BudgetInfo(dim=b.dim, layer=b.layer) for b in m.trained_budgets],
        max_seq_length=model.tokenizer.max_length,
        pooling=m.pooling,
        precision=m.precision,
        provider=model.runtime.provider,
        max_inputs_per_request=settings.max_inputs_per_request,
        heads=HeadsInfo(
            method=m.heads.method,
            fitted_budgets=[BudgetInfo(dim=b.dim, layer=b.layer) for b in m.heads.fitted_budgets],
            recipe=dict(m.heads.recipe),
            data=dict(m.heads.data),
        )
        if m.heads is not None
        else None,
        pareto_budgets=[e for e in budget_entries(m) if e.pareto],
        exit_space=exit_space_info(m),
    )


@router.get("/metrics")
async def metrics(m: MetricsDep, engine: EngineDep) -> Response:
    m.queue_depth.set(engine.batcher.depth)
    m.observe_shed(engine.batcher.shed_rows)
    body, content_type = m.exposition()
    return Response(body, media_type=content_type)
