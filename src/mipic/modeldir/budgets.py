"""What each (dim, layer) budget costs and buys: measured stage times, relative cost, the Pareto set, and
whether a budget's vectors can search an index built at the last layer (the exits' shared space).

Export measures quality on the built-in suites (training side) and hands the scores here; the cost
comes from timing the model's own stages on this machine. The server only reads the resulting
:class:`BudgetTable` from the manifest (``GET /budgets``).
"""

from __future__ import annotations

import platform
import time
from collections.abc import Mapping, Sequence

import numpy as np

from mipic.modeldir.manifest import SHARED_SPACE_MIN_COSINE, Budget, BudgetRow, BudgetTable, ExitSpace
from mipic.modeldir.runner import LoadedModel


def machine_name() -> str:
    """CPU model and core count, for the record next to every timing."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import os

    return f"{model}, {os.cpu_count()} logical CPUs"


def measure_stage_ms(
    model: LoadedModel, batch_size: int = 32, seq_len: int = 32, repeats: int = 10
) -> tuple[list[float], float]:
    """Milliseconds of the embeddings stage and of each layer on a (batch_size, seq_len) batch, and of the
    widest exit head on (batch_size, H) (0 without heads): the fastest of ``repeats`` runs, which is the
    least disturbed by whatever else the machine is doing."""
    rng = np.random.default_rng(0)
    ids = rng.integers(1, model.tokenizer.vocab_size, size=(batch_size, seq_len), dtype=np.int64)
    mask = np.ones_like(ids)
    runtime = model.runtime
    samples: list[list[float]] = [[] for _ in range(model.manifest.num_layers + 1)]
    head_samples: list[float] = []
    for _ in range(repeats + 1):  # the first round warms the sessions
        tick = time.perf_counter()
        states = runtime.embed(ids)
        samples[0].append(time.perf_counter() - tick)
        for layer in model.manifest.layers:
            tick = time.perf_counter()
            states = runtime.layer(layer, states, mask)
            samples[layer].append(time.perf_counter() - tick)
        pooled = np.ascontiguousarray(states.mean(axis=1), dtype=np.float32)
        tick = time.perf_counter()
        model.embed_pooled(pooled, model.manifest.num_layers, model.manifest.hidden_size)
        head_samples.append(time.perf_counter() - tick)
    stage_ms = [float(np.min(s[1:]) * 1000) for s in samples]
    head_ms = float(np.min(head_samples[1:]) * 1000) if model.heads is not None else 0.0
    return stage_ms, head_ms


def relative_cost(stage_ms: list[float], head_ms: float, layer: int, dim: int, hidden: int) -> float:
    """(embeddings + layers 1..layer + head rows for ``dim``) / (the same at the full budget)."""
    full = sum(stage_ms) + head_ms
    return (sum(stage_ms[: layer + 1]) + head_ms * dim / hidden) / full


def pareto_flags(points: list[tuple[float, float]]) -> list[bool]:
    """For (cost, quality) points: True where no other point has cost ≤ and quality ≥ with one strict."""
    flags = []
    for i, (c, q) in enumerate(points):
        dominated = any(
            (c2 <= c and q2 >= q) and (c2 < c or q2 > q) for j, (c2, q2) in enumerate(points) if j != i
        )
        flags.append(not dominated)
    return flags


def exit_space(rows: Sequence[BudgetRow], min_cosine: float = SHARED_SPACE_MIN_COSINE) -> ExitSpace | None:
    """Whether the exits share one space: the worst ``cosine_to_last`` over the rows against ``min_cosine``
    (None when no row has it, e.g. a table measured before issue 18)."""
    measured = [r for r in rows if r.cosine_to_last is not None]
    if not measured:
        return None
    worst = min(measured, key=lambda r: (r.cosine_to_last, r.layer, r.dim))
    cos = float(worst.cosine_to_last)  # type: ignore[arg-type]  # filtered above
    return ExitSpace(shared=cos >= min_cosine, worst_cosine=round(cos, 4),
                     worst_budget=Budget(dim=worst.dim, layer=worst.layer), min_cosine_required=min_cosine)


def build_table(
    scores: Mapping[tuple[int, int], Mapping[str, float]],
    suites: Mapping[str, str],
    stage_ms: list[float],
    head_ms: float,
    hidden: int,
    *,
    timing_batch: str = "",
    eval_items: int = 0,
    index_scores: Mapping[tuple[int, int], Mapping[str, float]] | None = None,
    index_suites: Mapping[str, str] | None = None,
    cosine_to_last: Mapping[tuple[int, int], float] | None = None,
) -> BudgetTable:
    """``scores[(dim, layer)][suite]`` = that suite's main metric → the manifest's budget table.

    Optional cross-budget measurements (issue 18): ``index_scores[(dim, layer)][suite]`` = a retrieval suite's
    main metric with queries at the budget and documents at (dim, last layer), ``cosine_to_last[(dim, layer)]``
    = the mean cosine of a text's vectors at the budget and at (dim, last layer); with them the table says
    whether the exits share one space (:func:`exit_space`)."""
    keys = sorted(scores, key=lambda k: (k[1], k[0]))
    costs = [relative_cost(stage_ms, head_ms, layer, dim, hidden) for dim, layer in keys]
    quality = [float(np.mean(list(scores[k].values()))) if scores[k] else float("nan") for k in keys]
    flags = pareto_flags(list(zip(costs, quality, strict=True)))
    index_scores = index_scores or {}
    cosine_to_last = cosine_to_last or {}

    def index_of(key: tuple[int, int]) -> tuple[float | None, dict[str, float]]:
        per_suite = {s: round(float(v), 4) for s, v in index_scores.get(key, {}).items()}
        return (round(float(np.mean(list(per_suite.values()))), 4) if per_suite else None), per_suite

    rows = []
    for (d, ly), c, q, p in zip(keys, costs, quality, flags, strict=True):
        index_q, index_s = index_of((d, ly))
        cos = cosine_to_last.get((d, ly))
        rows.append(BudgetRow(dim=d, layer=ly, relative_cost=round(c, 4), quality=round(q, 4),
                              scores={s: round(float(v), 4) for s, v in scores[(d, ly)].items()}, pareto=p,
                              index_quality=index_q, index_scores=index_s,
                              cosine_to_last=None if cos is None else round(float(cos), 4)))
    return BudgetTable(
        suites=dict(suites), rows=rows, stage_ms=[round(x, 3) for x in stage_ms], head_ms=round(head_ms, 4),
        timing_batch=timing_batch,
        timing_machine=machine_name(), eval_items=eval_items,
        index_suites=dict(index_suites or {}), exit_space=exit_space(rows),
    )
