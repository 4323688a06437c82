"""``GET /budgets``: quality and relative compute of every (dim, layer), so a client can pick the cheapest
budget that meets its quality bar."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from mipic.modeldir.manifest import Manifest
from mipic.service.api.deps import EngineDep
from mipic.service.api.schemas import BudgetEntry, BudgetInfo, BudgetsResponse, ExitSpaceInfo

router = APIRouter(tags=["budgets"])


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
