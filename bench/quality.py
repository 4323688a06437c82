"""Quality per budget: budget-grid heatmaps for every model variant and cost–quality Pareto fronts.

Reads what the trainer's evaluations wrote (``runs/<variant>/eval/grid.json``, from ``mipic eval``): one score
per (suite, layer, dim). The summary score of a budget is the mean of the suites' main metrics. Cost of a
budget is the encoder FLOPs per ~16-token text at that exit layer (the measured ms per text from
``bench/results/engine.json`` are reported beside it when present); dim changes no
encoder compute, it changes the vector's size (index memory, search time), so the front is over
(cost, dim, score): a budget is on it when no other budget is at most as costly, at most as wide and at
least as good. Usage: ``python -m bench.quality [--runs runs]``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import RESULTS_DIR, EncoderShape, encoder_flops, md_table, pareto_front, write_results

KEY_BUDGETS = [(384, 6), (128, 6), (64, 6), (64, 3), (32, 2), (16, 1)]  # (dim, layer)


def load_grids(runs: Path) -> dict[str, dict[str, Any]]:
    """variant name → grid.json content, for every ``runs/<variant>/eval/grid.json`` and
    ``runs/<group>/<variant>/eval/grid.json`` (``scripts/train_ablations.sh``: ``runs/ablations/<variant>_s<seed>``)
    that exists; a variant's name is its run directory relative to ``runs`` (``ablations/mipic_s43``), so the
    same variant name in two groups (150 and 600 steps) stays two rows."""
    out = {}
    for path in sorted({*runs.glob("*/eval/grid.json"), *runs.glob("*/*/eval/grid.json")}):
        try:
            grid = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if grid.get("main_metrics") and grid.get("scores"):
            out[path.parent.parent.relative_to(runs).as_posix()] = grid
    return out


def main_scores(grid: dict[str, Any]) -> dict[str, np.ndarray]:
    """suite → (layers, dims) array of its main metric."""
    return {suite: np.asarray(grid["scores"][suite][metric], dtype=np.float64)
            for suite, metric in grid["main_metrics"].items() if suite in grid["scores"]}


def mean_score(grid: dict[str, Any]) -> np.ndarray:
    return np.mean(np.stack(list(main_scores(grid).values())), axis=0)


def pareto_3d(costs: list[float], dims: list[int], scores: list[float]) -> list[int]:
    """Indices not dominated in (cost ↓, dim ↓, score ↑)."""
    idx = []
    for i in range(len(costs)):
        dominated = any(
            costs[j] <= costs[i] and dims[j] <= dims[i] and scores[j] >= scores[i]
            and (costs[j] < costs[i] or dims[j] < dims[i] or scores[j] > scores[i])
            for j in range(len(costs)))
        if not dominated:
            idx.append(i)
    return idx


def layer_costs(layers: list[int], engine: dict[str, Any] | None, hidden: int = 384,
                tokens: int = 16) -> tuple[dict[int, float], dict[int, float], str]:
    """Cost per text of exiting at each layer: encoder GFLOPs for a ``tokens``-token text (deterministic, the
    plotted axis) and, when ``engine.json`` has them, the measured fp32 ms per text (reported beside it)."""
    shape = EncoderShape(hidden, 4 * hidden)
    if engine and engine.get("shape"):
        shape = EncoderShape(**engine["shape"])
    flops = {ly: encoder_flops(shape, [tokens], ly) / 1e9 for ly in layers}
    measured: dict[int, float] = {}
    if engine:
        pts = [p for p in engine.get("points", []) if p["precision"] == "fp32" and p["dim"] == 384
               and p["length"] == tokens]
        if pts:
            batch = max(p["batch"] for p in pts)
            measured = {p["layer"]: 1000.0 / p["texts_per_s"] for p in pts if p["batch"] == batch}
    return flops, measured, f"encoder GFLOP per {tokens}-token text"


def analyse(grids: dict[str, dict[str, Any]], engine: dict[str, Any] | None) -> dict[str, Any]:
    variants: dict[str, Any] = {}
    cost_label = ""
    for name, grid in grids.items():
        layers, dims = list(grid["layers"]), list(grid["dims"])
        costs, measured, cost_label = layer_costs(layers, engine)
        mean = mean_score(grid)
        pts = [{"layer": ly, "dim": d, "cost": costs[ly], "score": float(mean[i, j])}
               for i, ly in enumerate(layers) for j, d in enumerate(dims)]
        front2 = pareto_front([p["cost"] for p in pts], [p["score"] for p in pts])
        front3 = pareto_3d([p["cost"] for p in pts], [p["dim"] for p in pts], [p["score"] for p in pts])
        variants[name] = {
            "model": grid.get("model"), "layers": layers, "dims": dims, "main_metrics": grid["main_metrics"],
            "n_texts": grid.get("n_texts"),
            "suites": {s: a.tolist() for s, a in main_scores(grid).items()}, "mean": mean.tolist(), "points": pts,
            "front_cost_score": [pts[i] for i in front2], "front_cost_dim_score": [pts[i] for i in front3],
            "measured_ms_per_text": measured,
        }
    return {"cost_label": cost_label, "variants": variants}


def markdown(result: dict[str, Any]) -> str:
    variants = result["variants"]
    if not variants:
        return "No evaluation grids found (runs/<variant>/eval/grid.json); run `mipic eval` first.\n"
    first = next(iter(variants.values()))
    suites = ", ".join(f"{s} ({m})" for s, m in first["main_metrics"].items())
    parts = [f"Budget grid scores from `runs/<variant>/eval/grid.json` (`mipic eval --builtin`); score = mean of the "
             f"suites' main metrics: {suites}. Cost axis: {result['cost_label']}.\n"]
    rows = []
    for name, v in variants.items():
        row: list[Any] = [name]
        for d, ly in KEY_BUDGETS:
            if ly in v["layers"] and d in v["dims"]:
                row.append(v["mean"][v["layers"].index(ly)][v["dims"].index(d)])
            else:
                row.append("")
        rows.append(row)
    parts.append("\n### Mean main score at a few budgets\n\n"
                 + md_table(["variant"] + [f"d{d}/l{ly}" for d, ly in KEY_BUDGETS], rows))
    ms = first.get("measured_ms_per_text") or {}
    if ms:
        parts.append("\nMeasured cost of an exit layer (fp32 engine, ~16-token texts, largest batch), ms per text: "
                     + ", ".join(f"l{ly}: {ms[ly]:.2f}" for ly in sorted(ms)) + ".\n")
    for name, v in variants.items():
        grid_rows = [[ly] + v["mean"][i] for i, ly in enumerate(v["layers"])]
        front = ", ".join(f"d{p['dim']}/l{p['layer']} ({p['score']:.3f})" for p in v["front_cost_score"])
        parts.append(f"\n### {name}: mean main score (rows: exit layer, columns: dim)\n\n"
                     + md_table(["layer"] + [f"d={d}" for d in v["dims"]], grid_rows)
                     + f"\nPareto front (cost, score): {front}.\n")
    return "".join(parts)


def plot_heatmaps(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = result["variants"]
    suites = [*next(iter(variants.values()))["suites"], "mean"]
    fig, axes = plt.subplots(len(variants), len(suites), figsize=(3.1 * len(suites), 2.8 * len(variants)),
                             squeeze=False)
    for r, (name, v) in enumerate(variants.items()):
        for c, suite in enumerate(suites):
            ax = axes[r][c]
            a = np.asarray(v["mean"] if suite == "mean" else v["suites"].get(suite, np.full_like(v["mean"], np.nan)))
            im = ax.imshow(a, origin="lower", aspect="auto", cmap="viridis")
            for i in range(a.shape[0]):
                for j in range(a.shape[1]):
                    ax.text(j, i, f"{a[i, j]:.2f}", ha="center", va="center", fontsize=6, color="w")
            ax.set_xticks(range(len(v["dims"])), [str(d) for d in v["dims"]], fontsize=7)
            ax.set_yticks(range(len(v["layers"])), [str(ly) for ly in v["layers"]], fontsize=7)
            metric = v["main_metrics"].get(suite, "mean of main metrics")
            ax.set_title(f"{name}: {suite}\n({metric})", fontsize=8)
            if c == 0:
                ax.set_ylabel("exit layer")
            if r == len(variants) - 1:
                ax.set_xlabel("dim")
            fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=72)
    plt.close(fig)


def plot_pareto(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = result["variants"]
    n = len(variants) + 1
    ncols = min(4, n)
    nrows = -(-n // ncols)
    fig, grid = plt.subplots(nrows, ncols, figsize=(4.3 * ncols, 3.8 * nrows), squeeze=False)
    axes = grid.reshape(-1)
    for ax in axes[n:]:
        ax.set_visible(False)
    fronts = axes[n - 1]
    cmap = plt.get_cmap("viridis")
    for k, (name, v) in enumerate(variants.items()):
        ax = axes[k]
        dims = v["dims"]
        on3 = {(p["dim"], p["layer"]) for p in v["front_cost_dim_score"]}
        for p in v["points"]:
            color = cmap(dims.index(p["dim"]) / max(1, len(dims) - 1))
            ax.scatter(p["cost"], p["score"], color=color, s=18 + 3 * dims.index(p["dim"]) ** 2,
                       edgecolors="k" if (p["dim"], p["layer"]) in on3 else "none", linewidths=1.2)
        front = v["front_cost_score"]
        ax.step([p["cost"] for p in front], [p["score"] for p in front], where="post", color="crimson", linewidth=1)
        for p in front:
            ax.annotate(f"d{p['dim']}/l{p['layer']}", (p["cost"], p["score"]), fontsize=6, xytext=(3, -8),
                        textcoords="offset points")
        if k == 0:
            for j, d in enumerate(dims):
                ax.scatter([], [], color=cmap(j / max(1, len(dims) - 1)), s=18 + 3 * j**2, label=f"d{d}")
            ax.legend(fontsize=6, loc="lower right", title="dim", title_fontsize=6)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(result["cost_label"], fontsize=7)
        ax.set_ylabel("mean main score")
        ax.grid(True, alpha=0.3)
        fronts.step([p["cost"] for p in front], [p["score"] for p in front], where="post", marker="o",
                    markersize=3, label=name)
    fronts.set_title("Pareto fronts (cost, score)", fontsize=9)
    fronts.set_xlabel(result["cost_label"], fontsize=7)
    fronts.legend(fontsize=6)
    fronts.grid(True, alpha=0.3)
    fig.suptitle("cost vs quality per (dim, layer): colour/size = dim, black edge = on the (cost, dim, score) front, "
                 "red = (cost, score) front", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run(runs: Path, results_dir: Path | None = None) -> dict[str, Any]:
    out = results_dir or RESULTS_DIR
    engine_path = out / "engine.json"
    engine = json.loads(engine_path.read_text()) if engine_path.is_file() else None
    result = analyse(load_grids(runs), engine)
    result["runs_dir"] = str(runs)
    write_results("quality", result, markdown(result), out)
    if result["variants"]:
        plot_heatmaps(result, out / "quality_heatmaps.png")
        plot_pareto(result, out / "quality_pareto.png")
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=Path, default=Path("runs"))
    args = ap.parse_args()
    print(markdown(run(args.runs)))


if __name__ == "__main__":
    main()
