"""Per-budget traffic and latency read back from the in-process metrics registry: what the budget page polls
(``GET /budgets/traffic``) where no Prometheus is at hand."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from mipic.service.metrics import Metrics


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """Prometheus' ``histogram_quantile``: ``buckets`` are (upper bound, cumulative count), ascending, ``+Inf``
    last. Linear inside the bucket holding the rank; a rank in the ``+Inf`` bucket gives the highest finite bound.
    None when nothing was observed."""
    total = buckets[-1][1] if buckets else 0.0
    if total <= 0:
        return None
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for upper_bound, count in buckets:
        if count >= rank:
            if upper_bound == float("inf"):
                return lower_bound
            in_bucket = count - lower_count
            return upper_bound if in_bucket <= 0 else lower_bound + (upper_bound - lower_bound) * (
                (rank - lower_count) / in_bucket)
        lower_bound, lower_count = upper_bound, count
    return lower_bound


@dataclass(frozen=True)
class BudgetLatency:
    """Embed requests served at one (dim, layer) since start, every endpoint and model version together."""

    dim: int
    layer: int
    requests: int
    embeddings: int
    mean_seconds: float | None
    p50_seconds: float | None
    p95_seconds: float | None


def latency_by_budget(metrics: Metrics) -> list[BudgetLatency]:
    """Read ``mipic_request_duration_seconds`` and ``mipic_embeddings_total`` back from the registry, one row per
    (dim, layer) served, cheapest dim then layer first: what the budget page polls instead of a Prometheus."""
    counts: dict[tuple[int, int], float] = defaultdict(float)
    sums: dict[tuple[int, int], float] = defaultdict(float)
    buckets: dict[tuple[int, int], dict[float, float]] = defaultdict(lambda: defaultdict(float))
    embeddings: dict[tuple[int, int], float] = defaultdict(float)
    for family in metrics.request_duration.collect():
        for s in family.samples:
            key = (int(s.labels["dim"]), int(s.labels["layer"]))
            if s.name.endswith("_bucket"):  # same buckets for every label set: summing them is exact
                buckets[key][float(s.labels["le"])] += s.value
            elif s.name.endswith("_count"):
                counts[key] += s.value
            elif s.name.endswith("_sum"):
                sums[key] += s.value
    for family in metrics.embeddings.collect():
        for s in family.samples:
            if s.name.endswith("_total"):
                embeddings[(int(s.labels["dim"]), int(s.labels["layer"]))] += s.value
    rows = []
    for key in sorted(counts):
        n = counts[key]
        cumulative = sorted(buckets[key].items())
        rows.append(BudgetLatency(
            dim=key[0], layer=key[1], requests=int(n), embeddings=int(embeddings.get(key, 0)),
            mean_seconds=sums[key] / n if n else None,
            p50_seconds=histogram_quantile(0.5, cumulative), p95_seconds=histogram_quantile(0.95, cumulative)))
    return rows
