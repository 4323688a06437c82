"""Offline engine throughput per exit layer: fp32 and int8, dims 384 and 64, short and long inputs, batch 1–128.

Measures ``LoadedModel.run`` (the early-exit runner the server uses) on pre-tokenized rows: no tokenizer,
no HTTP, no batcher. Each point reports texts/s, tokens/s, the batch latency, and the achieved FLOP/s
(from the encoder's shape, see :func:`bench.common.layer_flops`) as a fraction of the GEMM ceiling measured
in the same run. Batches are capped as the server caps them (``MIPIC_MAX_BATCH_TOKENS`` 16384 padded tokens,
``MIPIC_MAX_BATCH_TOKEN_PAIRS`` 32·256² padded token pairs, ``MIPIC_MAX_BATCH_SIZE`` 128 rows): the largest
batch listed per length is the largest the batcher forms. Usage: ``python -m bench.engine [--quick]``.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import (
    DEFAULT_MODEL,
    RESULTS_DIR,
    EncoderShape,
    encoder_flops,
    env_line,
    environment,
    load_snapshot,
    make_texts,
    md_table,
    percentiles,
    read_encoder_shape,
    time_calls,
    write_results,
)
from mipic.modeldir.runner import DEFAULT_MAX_BATCH_TOKEN_PAIRS, DEFAULT_MAX_BATCH_TOKENS, LoadedModel, Row

SERVER_MAX_BATCH_SIZE = 128  # the server's default MIPIC_MAX_BATCH_SIZE
SCALING_TARGET = 0.8  # layer k ≥ 0.8·(L/k)·layer L


@dataclass(frozen=True)
class EngineGrid:
    lengths: tuple[int, ...] = (16, 256)
    batches: tuple[int, ...] = (1, 8, 32, 128)
    dims: tuple[int, ...] = (384, 64)
    seconds: float = 0.5  # minimum time per point (and at least ``min_iters`` calls)
    min_iters: int = 1  # a call that alone lasts ``seconds`` is timed once (after the warm-up call per shape)
    max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS
    max_batch_token_pairs: int = DEFAULT_MAX_BATCH_TOKEN_PAIRS
    max_batch_size: int = SERVER_MAX_BATCH_SIZE
    layers: tuple[int, ...] | None = None  # None: every layer

    def batches_for(self, length: int) -> list[int]:
        """The batch sizes the server's batcher can form at this length, plus the largest it forms."""
        cap = max(1, min(self.max_batch_tokens // length, self.max_batch_token_pairs // (length * length),
                         self.max_batch_size))
        out = sorted({b for b in self.batches if b <= cap} | ({cap} if cap < max(self.batches) else set()))
        return out


@dataclass
class Variant:
    """A model directory to measure and the label it gets in the tables."""

    precision: str
    model_dir: Path
    extra: dict[str, Any] = field(default_factory=dict)


def measure_variant(variant: Variant, grid: EngineGrid, shape: EncoderShape, peak_gflops: float | None,
                    log: bool = True) -> list[dict[str, Any]]:
    model = LoadedModel(variant.model_dir, provider="cpu", verify_checksums=False)
    layers = list(grid.layers or model.manifest.layers)
    points: list[dict[str, Any]] = []
    try:
        for length in grid.lengths:
            batches = grid.batches_for(length)
            encoded = model.tokenizer.encode(make_texts(max(batches), length, seed=length))
            for batch in batches:
                ids = [e.ids for e in encoded[:batch]]
                seq_lens = [int(i.shape[0]) for i in ids]
                n_tokens = sum(seq_lens)
                # One call through every layer first: onnxruntime sizes its buffers for the new shape.
                model.run([Row(ids=i, dim=model.manifest.hidden_size, layer=max(layers)) for i in ids])
                for dim in grid.dims:
                    for layer in layers:
                        rows = [Row(ids=i, dim=dim, layer=layer) for i in ids]
                        times = time_calls(functools.partial(model.run, rows), grid.seconds, grid.min_iters)
                        mean_s = float(np.mean(times))
                        flops = encoder_flops(shape, seq_lens, layer)
                        gflops = flops / mean_s / 1e9
                        point = {
                            "precision": variant.precision, "length": length, "batch": batch, "dim": dim,
                            "layer": layer, "tokens_per_text": n_tokens / batch, "iters": len(times),
                            "texts_per_s": batch / mean_s, "tokens_per_s": n_tokens / mean_s,
                            "gflops": gflops, "frac_of_peak": gflops / peak_gflops if peak_gflops else None,
                            "latency": percentiles(times),
                        }
                        points.append(point)
                        if log:
                            print(f"  {variant.precision} T={length:<3} B={batch:<3} d={dim:<3} l={layer}: "
                                  f"{point['texts_per_s']:9.1f} texts/s {gflops:6.1f} GFLOP/s", flush=True)
    finally:
        model.close()
        gc.collect()
    return points


def scaling_checks(points: list[dict[str, Any]], num_layers: int) -> list[dict[str, Any]]:
    """Early-exit target per (precision, length, batch, dim): thr(k) ≥ 0.8·(L/k)·thr(L)."""
    out: list[dict[str, Any]] = []
    keys = sorted({(p["precision"], p["length"], p["batch"], p["dim"]) for p in points})
    for key in keys:
        by_layer = {p["layer"]: p["texts_per_s"] for p in points
                    if (p["precision"], p["length"], p["batch"], p["dim"]) == key}
        if num_layers not in by_layer:
            continue
        full = by_layer[num_layers]
        for k, thr in sorted(by_layer.items()):
            ideal = (num_layers / k) * full
            out.append({"precision": key[0], "length": key[1], "batch": key[2], "dim": key[3], "layer": k,
                        "texts_per_s": thr, "ideal_texts_per_s": ideal, "efficiency": thr / ideal,
                        "meets_target": thr >= SCALING_TARGET * ideal})
    return out


def markdown(payload: dict[str, Any]) -> str:
    env, load, points = payload["env"], payload["load_at_start"], payload["points"]
    peak = payload.get("peak_gflops")
    parts = [
        f"Offline engine (`LoadedModel.run`, pre-tokenized, {payload['model']}). {env_line(env)}. "
        f"Load average at start: {load['loadavg'][0]:.2f}. GEMM ceiling {peak or float('nan'):.1f} GFLOP/s "
        f"(bench/results/peak.md). FLOPs per layer: 2·(4H²+2H·I)·T + 4·T²·H with H={payload['shape']['hidden']}, "
        f"I={payload['shape']['intermediate']}; int8 \"GFLOP/s\" counts the same fp32-equivalent FLOPs.\n"
    ]
    for precision in dict.fromkeys(p["precision"] for p in points):
        for length in dict.fromkeys(p["length"] for p in points):
            sel = [p for p in points if p["precision"] == precision and p["length"] == length]
            if not sel:
                continue
            batches = sorted({p["batch"] for p in sel})
            dims = list(dict.fromkeys(p["dim"] for p in sel))
            headers = ["dim", "layer"] + [f"B={b} texts/s" for b in batches] + [
                f"B={batches[-1]} tokens/s", f"B={batches[-1]} GFLOP/s", f"B={batches[-1]} % peak",
                "B=1 p50 ms"]
            rows: list[list[Any]] = []
            for dim in dims:
                for layer in sorted({p["layer"] for p in sel}):
                    at = {p["batch"]: p for p in sel if p["dim"] == dim and p["layer"] == layer}
                    if not at:
                        continue
                    big = at[batches[-1]]
                    frac = big["frac_of_peak"]
                    rows.append([dim, layer] + [at[b]["texts_per_s"] for b in batches]
                                + [big["tokens_per_s"], big["gflops"], "n/a" if frac is None else f"{100 * frac:.0f}%",
                                   at[batches[0]]["latency"]["p50_ms"]])
            parts.append(f"\n### {precision}, ~{length}-token inputs\n\n" + md_table(headers, rows))
    # Early-exit scaling at the largest batch, dim 384.
    checks = payload["scaling"]
    layers = sorted({c["layer"] for c in checks})
    big_rows = []
    for precision in dict.fromkeys(c["precision"] for c in checks):
        for length in dict.fromkeys(c["length"] for c in checks):
            sel = [c for c in checks if c["precision"] == precision and c["length"] == length and c["dim"] == 384]
            if not sel:
                continue
            b = max(c["batch"] for c in sel)
            at = {c["layer"]: c for c in sel if c["batch"] == b}
            big_rows.append([precision, length, b] + [
                f"{at[k]['efficiency']:.2f}{'' if at[k]['meets_target'] else ' ✗'}" if k in at else ""
                for k in layers])
    if big_rows:
        parts.append("\n### Early-exit scaling: throughput(layer k) / ((L/k)·throughput(layer L)), dim 384, "
                     "largest batch (target ≥ 0.80; ✗ = missed)\n\n"
                     + md_table(["precision", "tokens", "batch"] + [f"k={k}" for k in layers], big_rows))
    return "".join(parts)


def plot(payload: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = payload["points"]
    lengths = list(dict.fromkeys(p["length"] for p in points))
    fig, axes = plt.subplots(1, len(lengths), figsize=(5.5 * len(lengths), 4), squeeze=False)
    for ax, length in zip(axes[0], lengths, strict=True):
        for precision in dict.fromkeys(p["precision"] for p in points):
            sel = [p for p in points if p["precision"] == precision and p["length"] == length and p["dim"] == 384]
            for batch in sorted({p["batch"] for p in sel}):
                xs = sorted((p["layer"], p["texts_per_s"]) for p in sel if p["batch"] == batch)
                ax.plot([x for x, _ in xs], [y for _, y in xs], marker="o" if precision == "fp32" else "s",
                        linestyle="-" if precision == "fp32" else "--", label=f"{precision} B={batch}")
        fp = [p for p in points if p["precision"] == "fp32" and p["length"] == length and p["dim"] == 384]
        if fp:
            big = max(p["batch"] for p in fp)
            L = payload["num_layers"]
            full = next((p["texts_per_s"] for p in fp if p["batch"] == big and p["layer"] == L), None)
            if full:
                ks = sorted({p["layer"] for p in fp})
                ax.plot(ks, [full * L / k for k in ks], color="grey", linestyle=":", label=f"ideal L/k (fp32 B={big})")
        ax.set_yscale("log")
        ax.set_xlabel("exit layer")
        ax.set_ylabel("texts/s")
        ax.set_title(f"offline engine, ~{length}-token inputs, dim 384")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(model_dir: Path, variants: list[Variant], grid: EngineGrid, peak_gflops: float | None,
        results_dir: Path | None = None) -> dict[str, Any]:
    load = load_snapshot()
    env = environment()
    manifest = json.loads((model_dir / "manifest.json").read_text())
    shape = read_encoder_shape(model_dir, int(manifest["hidden_size"]))
    points: list[dict[str, Any]] = []
    loads = {}
    for v in variants:
        loads[v.precision] = load_snapshot()
        print(f"engine: {v.precision} ({v.model_dir})", flush=True)
        points += measure_variant(v, grid, shape, peak_gflops)
    payload = {
        "env": env, "load_at_start": load, "load_per_variant": loads,
        "model": f"{manifest['name']}@{manifest['version']}",
        "model_dir": str(model_dir), "variants": [{"precision": v.precision, "model_dir": str(v.model_dir), **v.extra}
                                                   for v in variants],
        "num_layers": int(manifest["num_layers"]), "shape": shape.__dict__, "peak_gflops": peak_gflops,
        "served_precision": manifest.get("precision", "fp32"),
        "grid": grid.__dict__, "points": points, "scaling": scaling_checks(points, int(manifest["num_layers"])),
    }
    out = results_dir or RESULTS_DIR
    write_results("engine", payload, markdown(payload), out)
    plot(payload, out / "engine_layers.png")
    return payload


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--int8", type=Path, default=None, help="int8 model dir (default: build it with bench.prepare)")
    ap.add_argument("--no-int8", action="store_true")
    ap.add_argument("--quick", action="store_true", help="a few points, short times (smoke test)")
    ap.add_argument("--seconds", type=float, default=None)
    args = ap.parse_args()
    grid = EngineGrid(lengths=(16, 64), batches=(1, 8), seconds=0.05, min_iters=1) if args.quick else EngineGrid()
    if args.seconds is not None:
        grid = EngineGrid(**{**grid.__dict__, "seconds": args.seconds})
    variants = [Variant("fp32", args.model)]
    if not args.no_int8:
        from bench.prepare import ensure_precision

        variants.append(Variant("int8", args.int8 or ensure_precision(args.model, "int8")))
    peak_path = RESULTS_DIR / "peak.json"
    peak = json.loads(peak_path.read_text())["peak_gflops"] if peak_path.is_file() else None
    payload = run(args.model, variants, grid, peak)
    print(markdown(payload))


if __name__ == "__main__":
    main()
