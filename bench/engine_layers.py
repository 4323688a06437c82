"""In-process engine benchmark: throughput and latency per exit layer at dims 384 and 64.

Measures the staged runner alone (pre-tokenized rows: no tokenization, no HTTP), so the cost of each
exit layer shows directly. Usage: ``python -m bench.engine_layers [--model DIR] [--seconds S]``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from bench.common import environment, make_texts, md_table, percentiles, write_results
from mipic.service.engine.model import LoadedModel, Row


def measure(model: LoadedModel, rows: list[Row], seconds: float, min_iters: int = 5) -> list[float]:
    model.run(rows)  # warm
    times: list[float] = []
    t_end = time.perf_counter() + seconds
    while time.perf_counter() < t_end or len(times) < min_iters:
        t0 = time.perf_counter()
        model.run(rows)
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", type=Path, default=Path("models/all-minilm-l6-v2/1"))
    ap.add_argument("--seconds", type=float, default=3.0, help="time per configuration")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=32, help="approximate tokens per input")
    ap.add_argument("--provider", default="cpu")
    args = ap.parse_args()

    model = LoadedModel(args.model, provider=args.provider)
    texts = make_texts(args.batch, args.tokens)
    encoded = model.tokenizer.encode(texts)
    n_tokens = sum(e.length for e in encoded)
    results = []
    for dim in (model.manifest.hidden_size, 64):
        for layer in model.manifest.layers:
            batch = [Row(ids=e.ids, dim=dim, layer=layer) for e in encoded]
            single = [Row(ids=encoded[0].ids, dim=dim, layer=layer)]
            bt = measure(model, batch, args.seconds)
            st = measure(model, single, args.seconds / 2)
            mean_b = sum(bt) / len(bt)
            results.append({
                "dim": dim, "layer": layer, "batch": args.batch,
                "texts_per_s": args.batch / mean_b, "tokens_per_s": n_tokens / mean_b,
                "batch_latency": percentiles(bt), "single_latency": percentiles(st),
            })
            print(f"dim={dim} layer={layer}: {args.batch / mean_b:8.1f} texts/s  "
                  f"single p50 {percentiles(st)['p50_ms']:.2f} ms", flush=True)
    full = {r["dim"]: r["texts_per_s"] for r in results if r["layer"] == model.manifest.num_layers}
    rows = []
    for r in results:
        rows.append([r["dim"], r["layer"], r["texts_per_s"], r["tokens_per_s"],
                     r["batch_latency"]["p50_ms"], r["batch_latency"]["p99_ms"],
                     r["single_latency"]["p50_ms"], r["single_latency"]["p99_ms"],
                     f"{full[r['dim']] / r['texts_per_s']:.2f}"])
    env = environment()
    md = (f"In-process engine, {model.model_id}, batch {args.batch} x ~{args.tokens} tokens "
          f"({n_tokens} tokens), {env['cpu']} ({env['cores']} cores), onnxruntime {env['onnxruntime']}, "
          f"{args.provider}.\n\n"
          + md_table(["dim", "layer", "texts/s", "tokens/s", "batch p50 ms", "batch p99 ms",
                      "1-text p50 ms", "1-text p99 ms", "cost vs last layer"], rows))
    path = write_results("engine_layers", {"env": env, "args": vars(args) | {"model": str(args.model)},
                                           "results": results}, md)
    print(md)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
