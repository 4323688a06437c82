"""Summarise a set of evaluated runs (``scripts/train_ablations.sh``) into one table: per variant, over seeds,
the small-budget retrieval nDCG@10 (layer ≤ 3 and dim ≤ 64), the small-budget mean of every suite, and the
full budget per suite. Usage: ``python -m mipic.training.evaluation.ablations runs/ablations [--base heads_only]``.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from mipic.training.evaluation.result import GridResult

RETRIEVAL_METRIC = "ndcg@10"
# table order (scripts/train_ablations.sh): no encoder training, single objectives, MIPIC parts, MIPIC, extras
ORDER = ("heads_only", "mrl", "adaptive_layer", "distill", "mipic_no_sia", "mipic_no_pic", "mipic", "mipic_mic",
         "mipic_full_ft")
_RUN = re.compile(r"^(?P<variant>.+)_s(?P<seed>\d+)$")


def run_summary(grid: GridResult, max_layer: int = 3, max_dim: int = 64) -> dict[str, Any]:
    """One run's numbers: small = layer ≤ ``max_layer`` and dim ≤ ``max_dim``."""
    li = [i for i, ly in enumerate(grid.layers) if ly <= max_layer]
    di = [j for j, d in enumerate(grid.dims) if d <= max_dim]
    retrieval = [s for s, m in grid.main_metrics.items() if m == RETRIEVAL_METRIC]
    small_ret = float(np.mean([grid.table(s, RETRIEVAL_METRIC)[np.ix_(li, di)].mean() for s in retrieval]))
    small_all = float(np.mean([grid.table(s, m)[np.ix_(li, di)].mean() for s, m in grid.main_metrics.items()]))
    full = {s: grid.value(s, m, grid.layers[-1], grid.dims[-1]) for s, m in grid.main_metrics.items()}
    return {"small_retrieval": small_ret, "small_all": small_all, "full": full, "retrieval_suites": retrieval}


def collect(root: Path) -> dict[str, dict[int, dict[str, Any]]]:
    """``{variant: {seed: run_summary}}`` for every ``<root>/<variant>_s<seed>/eval/grid.json``."""
    out: dict[str, dict[int, dict[str, Any]]] = defaultdict(dict)
    for grid_file in sorted(root.glob("*/eval/grid.json")):
        match = _RUN.match(grid_file.parent.parent.name)
        if match is None:
            continue
        grid = GridResult.from_dict(json.loads(grid_file.read_text()))
        out[match["variant"]][int(match["seed"])] = run_summary(grid)
    return dict(out)


def _mean_spread(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f} (n={len(values)})"


def table(runs: dict[str, dict[int, dict[str, Any]]], base: str = "heads_only") -> str:
    """Markdown: one row per variant; full-budget columns are the change against ``base`` (its seed mean)."""
    if not runs:
        return "no evaluated runs\n"
    suites = list(next(iter(next(iter(runs.values())).values()))["full"])
    base_full = ({s: statistics.mean(r["full"][s] for r in runs[base].values()) for s in suites}
                 if base in runs else None)
    head = ["variant", "seeds", "small-budget retrieval nDCG@10", "small-budget mean (all suites)",
            *(f"full {s}" + (f" (Δ vs {base})" if base_full else "") for s in suites)]
    lines = ["| " + " | ".join(head) + " |", "|---|---:|---:|---:|" + "---:|" * len(suites)]
    ranked = sorted(runs.items(), key=lambda kv: (ORDER.index(kv[0]) if kv[0] in ORDER else len(ORDER), kv[0]))
    for variant, seeds in ranked:
        rs = list(seeds.values())
        cells = [variant, ",".join(str(s) for s in sorted(seeds)),
                 _mean_spread([r["small_retrieval"] for r in rs]), _mean_spread([r["small_all"] for r in rs])]
        for s in suites:
            v = statistics.mean(r["full"][s] for r in rs)
            cells.append(f"{v:.4f}" + (f" ({v - base_full[s]:+.4f})" if base_full else ""))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--base", default="heads_only")
    parser.add_argument("--out", type=Path, default=None, help="Write ablations.md and ablations.json here.")
    args = parser.parse_args()
    runs = collect(args.root)
    md = table(runs, args.base)
    print(md)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "ablations.md").write_text(md)
        (args.out / "ablations.json").write_text(json.dumps(runs, indent=1) + "\n")


if __name__ == "__main__":
    main()
