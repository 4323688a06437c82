"""What the exit heads cost in the engine: throughput of ``LoadedModel.run`` with the model's heads and with
them switched off, same model, same rows, interleaved rounds so machine noise hits both alike.

The hardest case for the heads is the cheapest budget: layer 1 with ~16-token texts, where one H×H matmul
per text is largest next to the encoder's work. Target (issue 11): heads cost at most 3% throughput there.
Usage: ``python -m bench.heads_cost [--model DIR] [--rounds N]``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import DEFAULT_MODEL, env_line, environment, load_snapshot, make_texts, md_table, write_results
from mipic.modeldir.runner import LoadedModel, Row


def measure(model_dir: Path, rounds: int = 7, seconds: float = 0.6) -> dict[str, Any]:
    model = LoadedModel(model_dir, provider="cpu", verify_checksums=False)
    heads = model.heads
    if heads is None:
        raise SystemExit(f"{model_dir} has no exit heads: nothing to measure")
    points: list[dict[str, Any]] = []
    for layer, dim, tokens, batch in [(1, 384, 16, 32), (1, 64, 16, 32), (1, 384, 16, 128), (6, 384, 16, 128)]:
        ids = [e.ids for e in model.tokenizer.encode(make_texts(batch, tokens, seed=batch))]
        rows = [Row(ids=i, dim=dim, layer=layer) for i in ids]
        rates: dict[str, list[float]] = {"heads": [], "none": []}
        for _ in range(rounds):
            for label in ("heads", "none"):
                model.heads = heads if label == "heads" else None
                model.run(rows)  # warm
                n, t0 = 0, time.perf_counter()
                while time.perf_counter() - t0 < seconds:
                    model.run(rows)
                    n += 1
                rates[label].append(n * batch / (time.perf_counter() - t0))
        model.heads = heads
        with_heads, without = float(np.median(rates["heads"])), float(np.median(rates["none"]))
        points.append({"layer": layer, "dim": dim, "tokens": tokens, "batch": batch,
                       "texts_per_s_heads": round(with_heads, 1), "texts_per_s_plain": round(without, 1),
                       "cost_pct": round(100 * (1 - with_heads / without), 2)})
    return {"points": points, "rounds": rounds, "seconds_per_round": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    env, snap = environment(), load_snapshot()
    result = measure(args.model, args.rounds)
    rows = [[p["layer"], p["dim"], p["tokens"], p["batch"], p["texts_per_s_plain"], p["texts_per_s_heads"],
             f"{p['cost_pct']:+.2f}%"] for p in result["points"]]
    md = ("# Exit heads: cost in the engine\n\n" + env_line(env) + f"\n\nload at start: {snap['loadavg']}; "
          f"median of {result['rounds']} interleaved rounds.\n\n"
          + md_table(["layer", "dim", "tokens", "batch", "texts/s plain", "texts/s heads", "heads cost"], rows))
    write_results("heads_cost", {"env": env, "load": snap, **result}, md, args.out)
    print(md)


if __name__ == "__main__":
    main()
