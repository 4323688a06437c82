"""Write a grid result as ``grid.json``, ``grid.md`` (one table per metric) and heatmap PNGs."""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from mipic.training.evaluation.result import EXIT_COSINE, EXITS_SUITE, INDEX_PREFIX, GridResult

logger = logging.getLogger(__name__)

# Metrics where smaller is better: the heatmap colour map is reversed so "good" is always bright.
LOWER_IS_BETTER = frozenset({"alignment", "uniformity"})


def _fmt(v: float) -> str:
    return "–" if math.isnan(v) else f"{v:.4f}"


def grid_markdown(result: GridResult) -> str:
    """One table per (suite, metric): rows are layers, columns are dims."""
    lines = [f"# Budget grid: {result.model or 'model'}", ""]
    lines.append(f"{result.n_texts} distinct texts, {result.seconds:.1f} s.")
    lines.append(cross_exit_markdown(result).rstrip("\n"))
    lines.append(exit_pairs_markdown(result).rstrip("\n"))
    header = "| layer | " + " | ".join(f"d={d}" for d in result.dims) + " |"
    rule = "|---:|" + "---:|" * len(result.dims)
    for suite, metrics in result.scores.items():
        main = result.main_metrics.get(suite)
        for metric in sorted(metrics, key=lambda m: (m != main, m)):
            tag = " (main)" if metric == main else ""
            lines += ["", f"## {suite} · {metric}{tag}", "", header, rule]
            for layer, row in zip(result.layers, result.table(suite, metric), strict=True):
                lines.append(f"| {layer} | " + " | ".join(_fmt(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


def plot_heatmap(
    values: np.ndarray,
    layers: list[int],
    dims: list[int],
    title: str,
    path: Path,
    lower_is_better: bool = False,
    xlabel: str = "dim",
    ylabel: str = "layer",
) -> None:
    """Annotated (layers × dims) heatmap, written with the Agg canvas (no display, no global state); the axes'
    names are ``xlabel`` and ``ylabel`` (another pair of axes: exit pairs, query layer × document layer)."""
    fig = Figure(figsize=(1.1 * len(dims) + 2.5, 0.6 * len(layers) + 1.8), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(
        values, aspect="auto", origin="lower", cmap="viridis_r" if lower_is_better else "viridis"
    )
    ax.set_xticks(range(len(dims)), [str(d) for d in dims])
    ax.set_yticks(range(len(layers)), [str(ly) for ly in layers])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    finite = values[np.isfinite(values)]
    mid = float(finite.mean()) if finite.size else 0.0
    for i in range(len(layers)):
        for j in range(len(dims)):
            v = values[i, j]
            bright = (v < mid) if lower_is_better else (v > mid)
            ax.text(
                j,
                i,
                _fmt(v) if math.isnan(v) else f"{v:.3f}",
                ha="center",
                va="center",
                fontsize=8,
                color="black" if bright else "white",
            )
    fig.colorbar(image, ax=ax)
    fig.savefig(path, dpi=100)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def cross_exit_metrics(result: GridResult) -> list[tuple[str, str]]:
    """(suite, metric) of the cross-exit measurements the grid has: each retrieval suite against a last-layer
    index (``index_<main metric>``) and the exits' cosine to the last layer."""
    out = [(s, INDEX_PREFIX + m) for s, m in result.main_metrics.items() if INDEX_PREFIX + m in result.scores[s]]
    if EXIT_COSINE in result.scores.get(EXITS_SUITE, {}):
        out.append((EXITS_SUITE, EXIT_COSINE))
    return out


def cross_exit_markdown(result: GridResult) -> str:
    """The cross-exit summary at the top of ``grid.md``: mean over the retrieval suites of queries at (d, l)
    against documents at (d, last layer), its ratio to both sides at (d, last layer), and the cosine."""
    metrics = cross_exit_metrics(result)
    index = [(s, m) for s, m in metrics if s != EXITS_SUITE]
    if not index or (EXITS_SUITE, EXIT_COSINE) not in metrics:
        return ""
    same = np.mean([result.table(s, m.removeprefix(INDEX_PREFIX)) for s, m in index], axis=0)
    cross = np.mean([result.table(s, m) for s, m in index], axis=0)
    cos = result.table(EXITS_SUITE, EXIT_COSINE)
    header = "| layer | " + " | ".join(f"d={d}" for d in result.dims) + " |"
    rule = "|---:|" + "---:|" * len(result.dims)
    suites = ", ".join(s for s, _ in index)
    lines = ["", "## One index, any exit", "",
             f"Queries at (dim, layer) against documents at (dim, last layer): mean of {suites}; in brackets the "
             "ratio to both sides at (dim, last layer).", "", header, rule]
    for i, layer in enumerate(result.layers):
        cells = [f"{cross[i, j]:.4f} ({cross[i, j] / same[-1, j]:.2f})" if same[-1, j] > 0 else _fmt(cross[i, j])
                 for j in range(len(result.dims))]
        lines.append(f"| {layer} | " + " | ".join(cells) + " |")
    lines += ["", "Mean cosine between a text's vector at (dim, layer) and at (dim, last layer):", "", header, rule]
    for i, layer in enumerate(result.layers):
        lines.append(f"| {layer} | " + " | ".join(_fmt(v) for v in cos[i]) + " |")
    return "\n".join(lines) + "\n"


def exit_pair_tables(result: GridResult) -> dict[int, np.ndarray]:
    """dim → (layers × layers) mean over the retrieval suites of queries at (dim, row layer) against documents at
    (dim, column layer); empty when the grid has no exit pairs."""
    dims = sorted({int(d) for tables in result.exit_pairs.values() for d in tables})
    return {d: np.mean([np.asarray(t[str(d)], dtype=np.float64) for t in result.exit_pairs.values()
                        if str(d) in t], axis=0) for d in dims}


def exit_pairs_markdown(result: GridResult) -> str:
    """Every pair of exits at the grid's pair dims: queries at one layer, documents at another."""
    tables = exit_pair_tables(result)
    if not tables:
        return ""
    suites = ", ".join(result.exit_pairs)
    header = "| query layer ↓ · document layer → | " + " | ".join(str(ly) for ly in result.layers) + " |"
    rule = "|---:|" + "---:|" * len(result.layers)
    lines = ["", "## Queries at one exit, documents at another", "",
             f"Mean of {suites} with queries at (dim, row layer) against documents at (dim, column layer): the "
             "diagonal is the same budget on both sides, the last column an index built at the last layer."]
    for dim, table in tables.items():
        lines += ["", f"d={dim}:", "", header, rule]
        for layer, row in zip(result.layers, table, strict=True):
            lines.append(f"| {layer} | " + " | ".join(_fmt(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


def write_report(result: GridResult, out_dir: Path) -> list[Path]:
    """Write ``grid.json``, ``grid.md`` and ``heatmap_<suite>_<metric>.png`` per main metric and per cross-exit
    metric (queries against a last-layer index, cosine to the last layer), and ``heatmap_exit_pairs_d<dim>.png``
    (queries at one exit against documents at another) at each pair dim."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / "grid.json", out_dir / "grid.md"]
    written[0].write_text(json.dumps(result.to_dict(), indent=2) + "\n", encoding="utf-8")
    written[1].write_text(grid_markdown(result), encoding="utf-8")
    for suite, metric in [*result.main_metrics.items(), *cross_exit_metrics(result)]:
        path = out_dir / f"heatmap_{_safe(suite)}_{_safe(metric)}.png"
        plot_heatmap(
            result.table(suite, metric),
            result.layers,
            result.dims,
            f"{suite} · {metric}",
            path,
            lower_is_better=metric in LOWER_IS_BETTER,
        )
        written.append(path)
    for dim, table in exit_pair_tables(result).items():
        path = out_dir / f"heatmap_exit_pairs_d{dim}.png"
        plot_heatmap(table, result.layers, result.layers, f"queries × documents by exit layer · d={dim}", path,
                     xlabel="document layer", ylabel="query layer")
        written.append(path)
    logger.info("wrote grid report to %s", out_dir)
    return written
