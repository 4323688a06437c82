"""The result of a budget grid: metric tables indexed by (layer, dim), with JSON round trip."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from mipic.modeldir.manifest import budget_key

#: The pseudo-suite of cross-exit metrics: ``cosine_to_last`` = mean over the grid's texts of
#: cos(v_(d, l), v_(d, L)), the same text's vectors at this budget and at the same dim of the last layer.
EXITS_SUITE = "exits"
EXIT_COSINE = "cosine_to_last"
#: Prefix of a retrieval suite's metrics with queries at the budget and documents at (d, L).
INDEX_PREFIX = "index_"


@dataclass
class GridResult:
    """``scores[suite][metric][i][j]`` is the metric at ``layers[i]``, ``dims[j]`` (NaN if undefined).

    ``exit_pairs[suite][str(dim)][i][j]`` is a retrieval suite's main metric with queries at (dim, layers[i]) and
    documents at (dim, layers[j]): the diagonal is the same-budget score, the last column the ``index_`` one.
    """

    model: str
    layers: list[int]
    dims: list[int]
    scores: dict[str, dict[str, list[list[float]]]]
    main_metrics: dict[str, str]
    n_texts: int = 0
    seconds: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)
    exit_pairs: dict[str, dict[str, list[list[float]]]] = field(default_factory=dict)

    def value(self, suite: str, metric: str, layer: int, dim: int) -> float:
        return self.scores[suite][metric][self.layers.index(layer)][self.dims.index(dim)]

    def table(self, suite: str, metric: str) -> np.ndarray:
        """(len(layers), len(dims)) array."""
        return np.asarray(self.scores[suite][metric], dtype=np.float64)

    def by_budget(self) -> dict[str, dict[str, float]]:
        """``{"d{dim}_l{layer}": {"suite/metric": value}}``, the shape of ``Manifest.eval``."""
        out: dict[str, dict[str, float]] = {}
        for i, layer in enumerate(self.layers):
            for j, dim in enumerate(self.dims):
                out[budget_key(dim, layer)] = {
                    f"{suite}/{metric}": values[i][j]
                    for suite, metrics in self.scores.items()
                    for metric, values in metrics.items()
                    if not math.isnan(values[i][j])
                }
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: NaN becomes ``None``."""
        data = asdict(self)
        for key in ("scores", "exit_pairs"):
            data[key] = {s: {m: [[None if math.isnan(v) else v for v in row] for row in t] for m, t in ms.items()}
                         for s, ms in data[key].items()}
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GridResult:
        def tables(values: dict[str, dict[str, list[list[Any]]]]) -> dict[str, dict[str, list[list[float]]]]:
            return {s: {m: [[math.nan if v is None else float(v) for v in row] for row in t] for m, t in ms.items()}
                    for s, ms in values.items()}

        # exit_pairs: absent from grids written before it existed
        return cls(**{**data, "scores": tables(data["scores"]), "exit_pairs": tables(data.get("exit_pairs", {}))})
