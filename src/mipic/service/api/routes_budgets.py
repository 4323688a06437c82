"""``GET /budgets``: quality and relative compute of every (dim, layer), so a client can pick the cheapest
budget that meets its quality bar; ``GET /budgets/traffic``: what each budget has served and how fast."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from mipic.modeldir.manifest import Manifest
from mipic.service.api.deps import EngineDep, MetricsDep
from mipic.service.api.schemas import BudgetEntry, BudgetInfo, BudgetsResponse, ExitSpaceInfo
from mipic.service.traffic import latency_by_budget

router = APIRouter(tags=["budgets"])


class BudgetTraffic(BaseModel):
    dim: int
    layer: int
    requests: int = Field(description="embed requests answered at this budget since the server started")
    embeddings: int = Field(description="vectors returned at this budget")
    mean_ms: float | None
    p50_ms: float | None = Field(description="median latency, interpolated in the latency histogram's buckets")
    p95_ms: float | None


class TrafficResponse(BaseModel):
    """``GET /budgets/traffic``: the latency histogram of ``/metrics`` per (dim, layer), for a page to poll."""

    model: str
    budgets: list[BudgetTraffic] = Field(description="budgets served at least once, by dim then layer")


def budget_entries(manifest: Manifest) -> list[BudgetEntry]:
    """The manifest's budget table, cheapest first (ties: better first)."""
    if manifest.budgets is None:
        return []
    rows = sorted(manifest.budgets.rows, key=lambda r: (r.relative_cost, -r.quality, r.layer, r.dim))
    return [BudgetEntry.model_validate(r.model_dump()) for r in rows]


def exit_space_info(manifest: Manifest) -> ExitSpaceInfo:
    """What the manifest says about the exits' shared space (measured at export with the budget table)."""
    space = manifest.budgets.exit_space if manifest.budgets is not None else None
    if space is None:
        return ExitSpaceInfo(shared=None, note="not measured (a model exported before cross-exit measurements): "
                             "query and index with the same layer")
    note = ("a query at any (dim, layer) can search an index built at (dim, last layer)" if space.shared else
            "exits do not share one space: query and index must use the same layer")
    return ExitSpaceInfo(shared=space.shared, worst_cosine=space.worst_cosine,
                         worst_budget=BudgetInfo(dim=space.worst_budget.dim, layer=space.worst_budget.layer),
                         min_cosine_required=space.min_cosine_required, note=note)


@router.get("/budgets", response_model=BudgetsResponse)
async def budgets(
    engine: EngineDep,
    min_quality: Annotated[
        float | None,
        Query(ge=0, le=1, description="Recommend the cheapest budget whose quality is at least this."),
    ] = None,
    pareto_only: Annotated[bool, Query(description="List only the Pareto-optimal budgets.")] = False,
) -> BudgetsResponse:
    m = engine.model.manifest
    entries = budget_entries(m)
    recommended = None
    if min_quality is not None:
        recommended = next((e for e in entries if e.quality >= min_quality), None)
    if pareto_only:
        entries = [e for e in entries if e.pareto]
    table = m.budgets
    return BudgetsResponse(
        model=m.model_id,
        available=table is not None,
        suites=dict(table.suites) if table else {},
        budgets=entries,
        recommended=recommended,
        stage_ms=list(table.stage_ms) if table else [],
        timing_machine=table.timing_machine if table else "",
        eval_items=table.eval_items if table else 0,
        index_suites=dict(table.index_suites) if table else {},
        exit_space=exit_space_info(m),
    )


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


@router.get("/budgets/traffic", response_model=TrafficResponse)
async def traffic(engine: EngineDep, metrics: MetricsDep) -> TrafficResponse:
    """Since start, every endpoint together; a rate is the difference of two polls."""
    return TrafficResponse(model=engine.model.model_id, budgets=[
        BudgetTraffic(dim=r.dim, layer=r.layer, requests=r.requests, embeddings=r.embeddings,
                      mean_ms=_ms(r.mean_seconds), p50_ms=_ms(r.p50_seconds), p95_ms=_ms(r.p95_seconds))
        for r in latency_by_budget(metrics)])
