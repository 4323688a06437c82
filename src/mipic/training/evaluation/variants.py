"""The same encoder read out three ways — plain truncation, a PCA rotation, fitted exit heads — scored
side by side at every (layer, dim), so a trained model is always compared with its free baselines."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mipic.modeldir.heads import ExitHeads
from mipic.modeldir.vector import apply_head, embed
from mipic.training.evaluation.encoders import AllLayersEncoder
from mipic.training.evaluation.grid import run_grid
from mipic.training.evaluation.report import write_report
from mipic.training.evaluation.result import GridResult
from mipic.training.evaluation.suites import Suite

logger = logging.getLogger(__name__)

VARIANTS = ("plain", "pca", "heads")


class HeadsEncoder:
    """An all-layers encoder read out through exit heads (``None``: plain truncation).

    ``encode_all_layers`` returns the heads' full-width outputs, so the grid's ``truncate_normalize``
    of them is exactly the served ``vector.embed`` at every (layer, dim).
    """

    def __init__(self, base: AllLayersEncoder, heads: ExitHeads | None) -> None:
        self.base = base
        self.heads = heads
        self.num_layers = base.num_layers
        self.hidden_size = base.hidden_size
        self.dims = getattr(base, "dims", None)

    def encode_all_layers(self, texts: Sequence[str]) -> np.ndarray:
        pooled = self.base.encode_all_layers(texts)
        if self.heads is None:
            return pooled
        return np.stack(
            [np.asarray(apply_head(pooled[i], *self.heads.layer(i + 1))) for i in range(pooled.shape[0])]
        ).astype(np.float32)

    def encode(self, texts: Sequence[str], layer: int, dim: int) -> np.ndarray:
        pooled = self.base.encode_all_layers(texts)[layer - 1]
        head = self.heads.layer(layer) if self.heads is not None else None
        return np.asarray(embed(pooled, dim, head), dtype=np.float32)


def main_table(result: GridResult) -> np.ndarray:
    """(layers, dims): the mean of the suites' main metrics at each budget."""
    return np.mean([result.table(s, m) for s, m in result.main_metrics.items()], axis=0)


def small_mask(result: GridResult, max_layer: int = 3, max_dim: int = 64) -> np.ndarray:
    """Budgets with layer ≤ ``max_layer`` or dim ≤ ``max_dim`` (the ones a small budget means)."""
    layers = np.asarray(result.layers)[:, None]
    dims = np.asarray(result.dims)[None, :]
    return np.asarray((layers <= max_layer) | (dims <= max_dim))


def compare_variants(
    encoder: AllLayersEncoder,
    suites: Sequence[Suite],
    variants: Mapping[str, ExitHeads | None],
    layers: Sequence[int] | None = None,
    dims: Sequence[int] | None = None,
    *,
    out_dir: Path | None = None,
    model_name: str = "",
    seed: int = 0,
    geometry: bool = True,
) -> dict[str, GridResult]:
    """Score every variant's grid (the encoder runs once: its pooled states are cached); write
    ``<out>/variants/<name>/grid.*`` and ``<out>/compare.md`` / ``compare.json``."""
    cached = _CachedEncoder(encoder)
    results: dict[str, GridResult] = {}
    for name, heads in variants.items():
        sub = Path(out_dir) / "variants" / name if out_dir is not None else None
        results[name] = run_grid(
            HeadsEncoder(cached, heads), suites, layers, dims, out_dir=sub, model_name=f"{model_name} [{name}]",
            seed=seed, geometry=geometry,
        )
    if out_dir is not None:
        summary = comparison_summary(results)
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "compare.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        (Path(out_dir) / "compare.md").write_text(comparison_markdown(results, model_name), encoding="utf-8")
    return results


class _CachedEncoder:
    """Remembers the last text set's pooled states, so every variant costs one encoder pass."""

    def __init__(self, base: AllLayersEncoder) -> None:
        self.base = base
        self.num_layers = base.num_layers
        self.hidden_size = base.hidden_size
        self.dims = getattr(base, "dims", None)
        self._key: tuple[str, ...] | None = None
        self._value: np.ndarray | None = None

    def encode_all_layers(self, texts: Sequence[str]) -> np.ndarray:
        key = tuple(texts)
        if self._key != key or self._value is None:
            self._value = self.base.encode_all_layers(texts)
            self._key = key
        return self._value

    def encode(self, texts: Sequence[str], layer: int, dim: int) -> np.ndarray:
        return np.asarray(embed(self.encode_all_layers(texts)[layer - 1], dim), dtype=np.float32)


def comparison_summary(results: Mapping[str, GridResult]) -> dict[str, Any]:
    """Per variant: the mean-of-main-metrics table, its small-budget mean, and per-suite full-budget values;
    against ``plain``: how many small budgets each variant wins and its worst full-budget change."""
    out: dict[str, Any] = {"variants": {}}
    plain = results.get("plain")
    for name, r in results.items():
        table = main_table(r)
        mask = small_mask(r)
        entry: dict[str, Any] = {
            "layers": r.layers,
            "dims": r.dims,
            "mean_main": np.round(table, 4).tolist(),
            "small_budget_mean": round(float(table[mask].mean()), 4),
            "full_budget": {s: round(r.value(s, m, r.layers[-1], r.dims[-1]), 4) for s, m in r.main_metrics.items()},
        }
        if plain is not None and name != "plain":
            delta = table - main_table(plain)
            entry["small_budgets_won"] = f"{int((delta[mask] > 0).sum())}/{int(mask.sum())}"
            entry["worst_full_budget_change"] = round(
                min(entry["full_budget"][s] - plain.value(s, m, plain.layers[-1], plain.dims[-1])
                    for s, m in plain.main_metrics.items()), 4)
        out["variants"][name] = entry
    return out


def _fmt(v: float) -> str:
    return "–" if math.isnan(v) else f"{v:.4f}"


def comparison_markdown(results: Mapping[str, GridResult], model_name: str = "") -> str:
    """Summary table, then the mean-of-main-metrics grid per variant and each variant's gain over plain."""
    summary = comparison_summary(results)["variants"]
    any_r = next(iter(results.values()))
    suites = list(any_r.main_metrics)
    lines = [f"# Read-outs compared: {model_name or 'model'}", "",
             "Small budgets = layer ≤ 3 or dim ≤ 64. Scores are each suite's main metric "
             f"({', '.join(f'{s}: {m}' for s, m in any_r.main_metrics.items())}).", "",
             "| variant | small-budget mean | small budgets won vs plain | worst full-budget change | "
             + " | ".join(f"full {s}" for s in suites) + " |",
             "|---|---:|---:|---:|" + "---:|" * len(suites)]
    for name, e in summary.items():
        lines.append(f"| {name} | {e['small_budget_mean']:.4f} | {e.get('small_budgets_won', '–')} | "
                     f"{e.get('worst_full_budget_change', float('nan')):+.4f} | "
                     + " | ".join(f"{e['full_budget'][s]:.4f}" for s in suites) + " |")
    header = "| layer | " + " | ".join(f"d={d}" for d in any_r.dims) + " |"
    rule = "|---:|" + "---:|" * len(any_r.dims)
    plain = results.get("plain")
    for name, r in results.items():
        table = main_table(r)
        lines += ["", f"## {name}: mean of main metrics", "", header, rule]
        lines += [f"| {ly} | " + " | ".join(_fmt(v) for v in row) + " |"
                  for ly, row in zip(r.layers, table, strict=True)]
        if plain is not None and name != "plain":
            delta = table - main_table(plain)
            lines += ["", f"## {name} − plain", "", header, rule]
            lines += [f"| {ly} | " + " | ".join(f"{v:+.4f}" for v in row) + " |"
                      for ly, row in zip(r.layers, delta, strict=True)]
    return "\n".join(lines) + "\n"


__all__ = ["VARIANTS", "HeadsEncoder", "compare_variants", "comparison_markdown", "comparison_summary",
           "main_table", "small_mask", "write_report"]
