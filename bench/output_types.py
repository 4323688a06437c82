"""Retrieval quality of each output type against float, on the built-in retrieval suites.

For every budget in ``KEY_BUDGETS`` the served vectors (pool → head → truncate → normalise, through the
model's own runner) of each suite's queries and documents are turned into each output type with the
model's calibrated ranges (``LoadedModel.quantize``, exactly what the server returns), and documents are
ranked the way a client stores and searches that type:

* ``float`` (and ``base64``, the same float32 bytes): cosine;
* ``int8``: cosine of the integer vectors (a vector store's int8 cosine / dot product);
* ``uint8``: Euclidean distance of the integer vectors (cosine of all-positive codes is meaningless; the
  distance is the same as int8's, the offset cancels);
* ``binary``/``ubinary``: Hamming distance of the packed bits (the same bits).

nDCG@10 per suite, and the mean, with the drop from float. Usage:
``python -m bench.output_types [--model models/all-minilm-l6-v2/1] [--items 300]``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import DEFAULT_MODEL, env_line, environment, md_table, write_results

KEY_BUDGETS = [(384, 6), (128, 6), (64, 6), (64, 3), (128, 1), (32, 2)]  # (dim, layer)
TYPES = ["float", "int8", "uint8", "binary"]
METRIC = {"float": "cosine", "int8": "cosine of the int8 codes", "uint8": "L2 of the uint8 codes",
          "binary": "Hamming (binary = ubinary)"}


def scores_for(output: str, q: np.ndarray, d: np.ndarray) -> np.ndarray:
    """(Q, D) similarity (higher is closer) of query and document codes of ``output``."""
    if output in ("binary", "ubinary"):
        qb = np.unpackbits((q.astype(np.int16) + (128 if output == "binary" else 0)).astype(np.uint8), axis=1)
        db = np.unpackbits((d.astype(np.int16) + (128 if output == "binary" else 0)).astype(np.uint8), axis=1)
        # −Hamming distance = matching bits − width
        qs, ds = qb.astype(np.float32) * 2 - 1, db.astype(np.float32) * 2 - 1
        return qs @ ds.T
    x, y = q.astype(np.float64), d.astype(np.float64)
    if output == "uint8":
        return -(np.sum(x**2, axis=1)[:, None] - 2 * x @ y.T + np.sum(y**2, axis=1)[None, :])
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    y /= np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-12)
    return x @ y.T


def run(model_dir: Path, items: int = 300, seed: int = 0) -> dict[str, Any]:
    from mipic.modeldir.runner import LoadedModel
    from mipic.training.evaluation.retrieval import ranking_metrics
    from mipic.training.evaluation.suites import RetrievalSuite, builtin_suites

    model = LoadedModel(model_dir, provider="cpu")
    suites = [s for s in builtin_suites(size=items, seed=seed) if isinstance(s, RetrievalSuite)]
    texts = sorted({t for s in suites for t in s.texts()})
    row = {t: i for i, t in enumerate(texts)}
    t0 = time.perf_counter()
    ids = [e.ids for e in model.tokenizer.encode(texts)]
    order = sorted(range(len(ids)), key=lambda i: ids[i].shape[0])
    pooled = np.empty((model.manifest.num_layers, len(ids), model.manifest.hidden_size), np.float32)
    for start in range(0, len(order), 32):
        chunk = order[start:start + 32]
        pooled[:, chunk] = model.pool_all_layers([ids[i] for i in chunk])
    seconds = time.perf_counter() - t0
    scores: dict[str, dict[str, dict[str, float]]] = {}
    for dim, layer in KEY_BUDGETS:
        vectors = model.embed_pooled(pooled[layer - 1], layer, dim)
        key = f"d{dim}_l{layer}"
        scores[key] = {}
        for output in TYPES:
            codes = model.quantize(vectors, dim, layer, output)
            per_suite = {}
            for s in suites:
                qids, dids = list(s.queries), list(s.corpus)
                drow = {d: i for i, d in enumerate(dids)}
                rels = [{drow[d]: g for d, g in s.qrels.get(q, {}).items() if d in drow} for q in qids]
                q = codes[[row[s.queries[x]] for x in qids]]
                d = codes[[row[s.corpus[x]] for x in dids]]
                per_suite[s.name] = ranking_metrics(scores_for(output, q, d), rels, k=10)["ndcg@10"]
            per_suite["mean"] = float(np.mean(list(per_suite.values())))
            scores[key][output] = per_suite
    return {"model": model.model_id, "items": items, "suites": [s.name for s in suites], "texts": len(texts),
            "budgets": KEY_BUDGETS, "types": TYPES, "metric": METRIC, "scores": scores,
            "pooling_seconds": seconds, "environment": environment()}


def markdown(result: dict[str, Any]) -> str:
    rows = []
    for dim, layer in result["budgets"]:
        s = result["scores"][f"d{dim}_l{layer}"]
        f = s["float"]["mean"]
        rows.append([f"({dim}, {layer})", f"{f:.4f}",
                     *(f"{s[t]['mean']:.4f} ({s[t]['mean'] - f:+.4f})" for t in result["types"][1:])])
    per_suite = []
    for name in result["suites"]:
        s = result["scores"]["d384_l6"]
        per_suite.append([name, *(f"{s[t][name]:.4f}" for t in result["types"])])
    return (
        f"# Output types: retrieval quality against float ({result['model']})\n\n"
        f"nDCG@10, mean of the built-in retrieval suites ({', '.join(result['suites'])}; {result['items']} items "
        f"each, eval split). Ranking per type: "
        + "; ".join(f"{t}: {m}" for t, m in result["metric"].items()) + ".\n\n"
        + md_table(["budget (dim, layer)", *(f"{t}" for t in result["types"])], rows)
        + "\n\nPer suite at (384, 6):\n\n"
        + md_table(["suite", *result["types"]], per_suite)
        + f"\n\n{env_line(result['environment'])}\n"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--items", type=int, default=300)
    args = ap.parse_args()
    result = run(args.model, args.items)
    path = write_results("output_types", result, markdown(result))
    print(markdown(result))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
