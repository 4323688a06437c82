"""Served throughput and latency: ``mipic serve`` in a child process, an open-loop Poisson load generator here.

For each (dim, layer) budget the offered rate rises as fractions of the offline engine's best throughput
for that budget (same texts, pre-tokenized, in this process before the server starts), so the last
points drive the server to saturation. "Served / offline" at saturation is what HTTP, JSON, tokenization
and the batcher cost. Server and load generator share the machine's cores; both are on loopback.
Usage: ``python -m bench.served [--quick]``.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import (
    DEFAULT_MODEL,
    RESULTS_DIR,
    env_line,
    environment,
    load_snapshot,
    make_texts,
    md_table,
    time_calls,
    write_results,
)
from bench.loadgen import Target, closed_loop, open_loop
from bench.servers import mipic_server

Budget = tuple[int, int]  # (dim, layer)


@dataclass(frozen=True)
class ServedConfig:
    budgets: tuple[Budget, ...] = ((384, 6), (64, 6), (64, 3), (64, 1))
    tokens: int = 16
    texts_per_request: int = 8
    fractions: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0, 1.25)
    seconds: float = 4.0  # per offered rate
    offline_batches: tuple[int, ...] = (32, 128)
    offline_seconds: float = 0.6
    max_requests: int = 20_000
    extra_env: tuple[tuple[str, str], ...] = ()
    no_spin: bool = False  # experiment: non-spinning onnxruntime thread pools (bench.ort_settings)


def request_batches(cfg: ServedConfig, n_batches: int = 64) -> list[list[str]]:
    texts = make_texts(cfg.texts_per_request * n_batches, cfg.tokens, seed=7)
    k = cfg.texts_per_request
    return [texts[i: i + k] for i in range(0, len(texts), k)]


def offline_reference(model_dir: Path, cfg: ServedConfig) -> dict[Budget, dict[str, float]]:
    """Best pre-tokenized ``LoadedModel.run`` throughput per budget over ``offline_batches``, same texts."""
    from bench.ort_settings import session_options
    from mipic.modeldir.runner import LoadedModel, Row

    with session_options(no_spin=cfg.no_spin):
        model = LoadedModel(model_dir, provider="cpu", verify_checksums=False)
    texts = [t for b in request_batches(cfg) for t in b]
    ids = [e.ids for e in model.tokenizer.encode(texts)]
    out: dict[Budget, dict[str, float]] = {}
    try:
        for dim, layer in cfg.budgets:
            best: dict[str, float] = {}
            for b in cfg.offline_batches:
                rows = [Row(ids=i, dim=dim, layer=layer) for i in ids[:b]]
                times = time_calls(functools.partial(model.run, rows), cfg.offline_seconds, 2, warmup=1)
                tps = b / float(np.mean(times))
                if tps > best.get("texts_per_s", 0.0):
                    best = {"texts_per_s": tps, "batch": float(b)}
            out[(dim, layer)] = best
    finally:
        model.close()
        gc.collect()
    return out


def sweep(target: Target, batches: list[list[str]], rates_rps: list[float], seconds: float, max_requests: int,
          label: str) -> list[dict[str, Any]]:
    """One open-loop run per offered rate, lowest first; a short closed-loop warm-up before the first."""
    asyncio.run(closed_loop(target, batches, 4, min(1.0, seconds / 2)))
    out = []
    for i, rate in enumerate(rates_rps):
        r = asyncio.run(open_loop(target, batches, rate, seconds, max_requests, seed=i)).summary()
        lat = r["latency"]
        print(f"  {label} offered {r['offered_texts_per_s']:8.1f} texts/s → {r['achieved_texts_per_s']:8.1f} "
              f"p50 {lat['p50_ms']:7.1f} p99 {lat['p99_ms']:7.1f} ms statuses {r['statuses']}", flush=True)
        out.append(r)
    return out


def saturation(points: list[dict[str, Any]]) -> dict[str, Any]:
    """The point with the highest achieved throughput (all answers OK)."""
    return max(points, key=lambda p: p["achieved_texts_per_s"])


def run(model_dir: Path, cfg: ServedConfig, results_dir: Path | None = None, name: str = "served") -> dict[str, Any]:
    load = load_snapshot()
    env = environment()
    offline = offline_reference(model_dir, cfg)
    batches = request_batches(cfg)
    results: list[dict[str, Any]] = []
    load_server = load_snapshot()
    with mipic_server(model_dir, dict(cfg.extra_env), no_spin=cfg.no_spin) as (url, _pid):
        for dim, layer in cfg.budgets:
            ref = offline[(dim, layer)]["texts_per_s"]
            rates = [f * ref / cfg.texts_per_request for f in cfg.fractions]
            target = Target(url, "/v1/embeddings", {"dimensions": dim, "layer": layer})
            points = sweep(target, batches, rates, cfg.seconds, cfg.max_requests, f"mipic d={dim} l={layer}")
            sat = saturation(points)
            results.append({"dim": dim, "layer": layer, "offline_texts_per_s": ref,
                            "offline_batch": int(offline[(dim, layer)]["batch"]), "points": points,
                            "saturation_texts_per_s": sat["achieved_texts_per_s"],
                            "served_over_offline": sat["achieved_texts_per_s"] / ref})
    payload = {"env": env, "load_at_start": load, "load_at_server_start": load_server, "model_dir": str(model_dir),
               "config": {**cfg.__dict__, "extra_env": dict(cfg.extra_env)}, "results": results}
    out = results_dir or RESULTS_DIR
    write_results(name, payload, markdown(payload), out)
    plot(payload, out / f"{name}_latency.png")
    return payload


def markdown(payload: dict[str, Any]) -> str:
    env, cfg, load = payload["env"], payload["config"], payload["load_at_start"]
    rows = []
    for r in payload["results"]:
        for p in r["points"]:
            lat = p["latency"]
            rows.append([f"d{r['dim']}/l{r['layer']}", p["offered_texts_per_s"], p["achieved_texts_per_s"],
                         lat["p50_ms"], lat["p95_ms"], lat["p99_ms"],
                         ", ".join(f"{k}: {v}" for k, v in p["statuses"].items())])
    summary = [[f"d{r['dim']}/l{r['layer']}", r["offline_texts_per_s"], r["offline_batch"], r["saturation_texts_per_s"],
                f"{100 * r['served_over_offline']:.0f}%{'' if r['served_over_offline'] >= 0.85 else ' ✗'}"]
               for r in payload["results"]]
    return (f"HTTP `POST /v1/embeddings` (with `dimensions`, `layer`), open loop (Poisson arrivals), "
            f"{cfg['texts_per_request']} texts of ~{cfg['tokens']} tokens per request, {cfg['seconds']:g} s per "
            f"offered rate; latency from the scheduled send time. Server (`mipic serve`, "
            f"{'onnxruntime thread pools without spinning (experiment)' if cfg.get('no_spin') else 'default settings'}"
            f") and load "
            f"generator (aiohttp) share the machine: {env_line(env)}. Load average at start: "
            f"{load['loadavg'][0]:.2f}.\n\n"
            + md_table(["budget", "offline texts/s", "offline batch", "served texts/s at saturation",
                        "served / offline (target ≥ 85%)"], summary)
            + "\n" + md_table(["budget", "offered texts/s", "achieved texts/s", "p50 ms", "p95 ms", "p99 ms",
                                "statuses"], rows))


def plot(payload: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for r in payload["results"]:
        xs = [p["offered_texts_per_s"] for p in r["points"]]
        label = f"d{r['dim']}/l{r['layer']}"
        (line,) = ax1.plot(xs, [p["achieved_texts_per_s"] for p in r["points"]], marker="o", label=label)
        ax1.axhline(r["offline_texts_per_s"], color=line.get_color(), linestyle=":", linewidth=1)
        ax2.plot(xs, [p["latency"]["p50_ms"] for p in r["points"]], marker="o", color=line.get_color(),
                 label=f"{label} p50")
        ax2.plot(xs, [p["latency"]["p99_ms"] for p in r["points"]], marker="x", linestyle="--",
                 color=line.get_color(), label=f"{label} p99")
    ax1.set_xscale("log")
    ax1.set_yscale("log")
    ax1.set_xlabel("offered texts/s")
    ax1.set_ylabel("achieved texts/s (dotted: offline engine)")
    ax1.legend(fontsize=7)
    ax1.grid(True, which="both", alpha=0.3)
    ax2.set_xscale("log")
    ax2.set_yscale("log")
    ax2.set_xlabel("offered texts/s")
    ax2.set_ylabel("latency ms")
    ax2.legend(fontsize=6, ncol=2)
    ax2.grid(True, which="both", alpha=0.3)
    fig.suptitle("mipic served, open-loop Poisson load")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def quick_config() -> ServedConfig:
    return ServedConfig(budgets=((384, 6), (64, 1)), fractions=(0.5, 1.25), seconds=1.0, offline_seconds=0.1,
                        offline_batches=(32,))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seconds", type=float, default=None)
    ap.add_argument("--texts-per-request", type=int, default=None)
    args = ap.parse_args()
    cfg = quick_config() if args.quick else ServedConfig()
    over: dict[str, Any] = {}
    if args.seconds is not None:
        over["seconds"] = args.seconds
    if args.texts_per_request is not None:
        over["texts_per_request"] = args.texts_per_request
    if over:
        cfg = ServedConfig(**{**cfg.__dict__, **over})
    payload = run(args.model, cfg)
    print(markdown(payload))


if __name__ == "__main__":
    main()
