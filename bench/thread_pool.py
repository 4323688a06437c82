"""Where the stage sessions' threads live (``MIPIC_ONNX_THREAD_POOL``): one global pool for the process
against one pool per stage session, offline and over HTTP, and what it does to early exit.

- Offline: ``LoadedModel.run`` (pre-tokenized, d64) at layers 1, 3 and 6 for every (length, batch) point the
  batcher forms with ~16- and ~256-token texts, the three layers' calls interleaved (one of each per round,
  median per layer); from the same rep, early exit as a fraction of the ideal ``L/k``: (texts/s at layer k) /
  (texts/s at layer L) / (L/k). Calls are made as a busy server makes them (``run(..., more=True)``: the
  memory a large batch grows is kept for the next); ``busy=False`` measures isolated batches.
- Served: saturation (closed loop, ``concurrency`` clients × 8 ~16-token texts, OpenAI surface) at d384/l6
  and d64/l1, and p50/p99 at one fixed open-loop rate at d384/l6.
Each variant runs in its own process (the global pool is process-wide) or server, the variants interleaved
in rotated order over ``reps`` repetitions; every ratio is per rep, median (min–max).
Usage: ``python -m bench.thread_pool [--reps N] [--quick]``.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import subprocess
import sys
import time
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
    request_batches,
    write_results,
)
from bench.ratios import (
    RatiosConfig,
    Spread,
    latency_point,
    paired_ratios,
    rotated,
    saturation_texts_per_s,
)

VARIANTS = ("global", "per-session")
REFERENCE = "per-session"
EARLY_EXIT_BOUND = 0.8  # issue 19: layer k ≥ 0.8 of the ideal L/k


@dataclass(frozen=True)
class PoolConfig:
    reps: int = 5
    seconds: float = 0.5  # per offline point
    # (~tokens, batches): the batch sizes the batcher forms at that length (128 rows; 32 x 256 tokens by pairs)
    shapes: tuple[tuple[int, tuple[int, ...]], ...] = ((16, (1, 8, 32, 128)), (256, (1, 8, 32)))
    layers: tuple[int, ...] = (1, 3, 6)
    busy: bool = True  # calls as a busy server makes them: more work follows (the arena is kept between them)
    served: bool = True
    served_budgets: tuple[tuple[int, int], ...] = ((384, 6), (64, 1))
    concurrency: int = 32
    served_seconds: float = 6.0
    latency_rate_rps: float = 25.0  # about half of d384/l6's saturation with 8 texts a request on 2 cores
    latency_seconds: float = 8.0


def key(tokens: int, batch: int, layer: int) -> str:
    return f"~{tokens} tok, B={batch}, l{layer}"


def worker(model_dir: str, variant: str, rep: int, cfg: PoolConfig) -> dict[str, float]:
    """One process, one variant: texts/s at every offline point."""
    from mipic.modeldir.runner import LoadedModel, Row, pin_single_thread_blas

    pin_single_thread_blas()  # as the server does at start: no BLAS thread limit around every exit head
    model = LoadedModel(Path(model_dir), provider="cpu", verify_checksums=False, threads=variant)  # type: ignore[arg-type]
    if model.runtime.threads != variant:
        raise RuntimeError(f"asked for {variant} thread pools, got {model.runtime.threads}")
    out: dict[str, float] = {}
    for tokens, batches in cfg.shapes:
        for batch in batches:
            texts = make_texts(batch, tokens, seed=rep)
            ids = [np.asarray(e.ids) for e in model.tokenizer.encode(texts)]
            runs = [functools.partial(model.run, [Row(ids=i, dim=64, layer=layer) for i in ids], more=cfg.busy)
                    for layer in cfg.layers]
            # the layers' calls interleaved, one of each per round: a burst of load elsewhere slows them alike,
            # so the early-exit ratios compare like with like
            times: list[list[float]] = [[] for _ in runs]
            for fn in runs:
                fn()
            t_end = time.perf_counter() + cfg.seconds * len(runs)
            while min(len(t) for t in times) < 3 or time.perf_counter() < t_end:
                for t, fn in zip(times, runs, strict=True):
                    t0 = time.perf_counter()
                    fn()
                    t.append(time.perf_counter() - t0)
            for layer, t in zip(cfg.layers, times, strict=True):
                out[key(tokens, batch, layer)] = batch / float(statistics.median(t))
    return out


def served(model_dir: Path, variant: str, rep: int, cfg: PoolConfig) -> dict[str, float]:
    from bench.servers import mipic_server

    rcfg = RatiosConfig(concurrency=cfg.concurrency, seconds=cfg.served_seconds)
    batches = request_batches(rcfg.texts_per_request, rcfg.tokens)  # as the ratios section: 8 ~16-token texts
    out: dict[str, float] = {}
    with mipic_server(model_dir, {"MIPIC_ONNX_THREAD_POOL": variant}) as (url, _):
        warm = RatiosConfig(concurrency=cfg.concurrency, seconds=1.0)
        for dim, layer in cfg.served_budgets:
            body = {"dimensions": dim, "layer": layer}
            saturation_texts_per_s(url, "/v1/embeddings", body, batches, warm)
            out[f"served d{dim}/l{layer} texts/s"] = saturation_texts_per_s(url, "/v1/embeddings", body, batches, rcfg)
        point = latency_point(url, "/v1/embeddings", {"dimensions": 384, "layer": 6}, batches, cfg.latency_rate_rps,
                              cfg.latency_seconds, seed=rep)
    out["p50 ms"], out["p99 ms"] = point["p50_ms"], point["p99_ms"]
    return out


def early_exit(values: list[dict[str, float]], cfg: PoolConfig) -> dict[str, Spread]:
    """Per (length, batch, k < L): (texts/s at k) / (texts/s at L) / (L/k), one value per rep."""
    deepest = max(cfg.layers)
    out: dict[str, Spread] = {}
    for tokens, batches in cfg.shapes:
        for batch in batches:
            for k in cfg.layers[:-1]:
                per_rep = [r[key(tokens, batch, k)] / r[key(tokens, batch, deepest)] / (deepest / k) for r in values]
                out[f"~{tokens} tok, B={batch}, l{k} vs l{deepest}"] = Spread(tuple(per_rep))
    return out


def run(model_dir: Path, cfg: PoolConfig, results_dir: Path | None = None) -> dict[str, Any]:
    load = load_snapshot()
    offline: dict[str, list[dict[str, float]]] = {v: [] for v in VARIANTS}
    http: dict[str, list[dict[str, float]]] = {v: [] for v in VARIANTS}
    for rep in range(cfg.reps):
        print(f"thread_pool: rep {rep + 1}/{cfg.reps}", flush=True)
        for variant in rotated(list(VARIANTS), rep):
            spec = json.dumps({"model_dir": str(model_dir), "variant": variant, "rep": rep, "cfg": cfg.__dict__})
            proc = subprocess.run([sys.executable, "-m", "bench.thread_pool", "--worker", spec],
                                  capture_output=True, text=True, check=True)
            offline[variant].append(json.loads(proc.stdout.strip().splitlines()[-1]))
            if cfg.served:
                http[variant].append(served(model_dir, variant, rep, cfg))
    payload = {"env": environment(), "load_at_start": load, "config": cfg.__dict__, "offline": offline,
               "served": http,
               "ratios": {k: paired_ratios([r[k] for r in offline["global"]], [r[k] for r in offline[REFERENCE]])
                          .as_dict() for k in offline["global"][0]},
               "early_exit": {v: {k: s.as_dict() for k, s in early_exit(offline[v], cfg).items()} for v in VARIANTS}}
    if cfg.served:
        payload["served_ratios"] = {
            k: paired_ratios([r[k] for r in http["global"]], [r[k] for r in http[REFERENCE]]).as_dict()
            for k in http["global"][0]}
    write_results("thread_pool", payload, markdown(payload), results_dir or RESULTS_DIR)
    return payload


def markdown(payload: dict[str, Any]) -> str:
    cfg = payload["config"]

    def med(series: list[dict[str, float]], k: str) -> float:
        return statistics.median(r[k] for r in series)

    rows = [[k, f"{med(payload['offline']['global'], k):,.0f}", f"{med(payload['offline'][REFERENCE], k):,.0f}",
             Spread(tuple(v["values"])).text()] for k, v in payload["ratios"].items()]
    lines = [
        f"Stage sessions' threads: one global pool vs one pool per stage session. Median of {cfg['reps']} "
        f"interleaved reps, each variant in its own process or server; ratios per rep, median (min–max). "
        f"{env_line(payload['env'])}. Load average at start: {payload['load_at_start']['loadavg'][0]}.", "",
        "Offline engine (`LoadedModel.run`, pre-tokenized, d64; the layers' calls interleaved"
        + (", each told more work follows, as a busy server's batches are" if cfg.get("busy") else "")
        + "), texts/s:", "",
        md_table(["point", "global", "per-session", "global / per-session"], rows), "",
        f"Early exit, (texts/s at layer k) / (texts/s at layer 6) / (6/k), per rep; target ≥ {EARLY_EXIT_BOUND} at "
        "every point (met only when the lower end meets it):", "",
    ]
    ee = payload["early_exit"]
    ee_rows = []
    for k in ee["global"]:
        g, p = Spread(tuple(ee["global"][k]["values"])), Spread(tuple(ee[REFERENCE][k]["values"]))
        ee_rows.append([k, g.text(), "yes" if g.met(EARLY_EXIT_BOUND) else "no", p.text(),
                        "yes" if p.met(EARLY_EXIT_BOUND) else "no"])
    lines.append(md_table(["point", "global", "met", "per-session", "met"], ee_rows))
    for v in VARIANTS:
        worst = min(ee[v].items(), key=lambda kv: Spread(tuple(kv[1]["values"])).low)
        met = sum(Spread(tuple(s["values"])).met(EARLY_EXIT_BOUND) for s in ee[v].values())
        lines.append(f"\n- {v}: {met} of {len(ee[v])} points met at the lower end; lowest {worst[0]} "
                     f"{Spread(tuple(worst[1]['values'])).text()}")
    if payload.get("served_ratios"):
        srows = [[k, f"{med(payload['served']['global'], k):,.0f}", f"{med(payload['served'][REFERENCE], k):,.0f}",
                  Spread(tuple(v["values"])).text()] for k, v in payload["served_ratios"].items()]
        lines += ["", f"Served (closed loop, {cfg['concurrency']} clients × 8 ~16-token texts, "
                  f"{cfg['served_seconds']} s; latency open-loop Poisson at {cfg['latency_rate_rps']:g} req/s, "
                  f"d384/l6, {cfg['latency_seconds']} s; load generator on the same cores):", "",
                  md_table(["measurement", "global", "per-session", "global / per-session"], srows)]
    return "\n".join(lines) + "\n"


def quick_config() -> PoolConfig:
    return PoolConfig(reps=2, seconds=0.05, shapes=((16, (8,)),), layers=(1, 6), served=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--offline-only", action="store_true")
    args = ap.parse_args()
    if args.worker:
        spec = json.loads(args.worker)
        raw = spec["cfg"]
        cfg = PoolConfig(**{**raw, "shapes": tuple((t, tuple(b)) for t, b in raw["shapes"]),
                            "layers": tuple(raw["layers"]),
                            "served_budgets": tuple(tuple(b) for b in raw["served_budgets"])})
        print(json.dumps(worker(spec["model_dir"], spec["variant"], spec["rep"], cfg)))
        return
    cfg = quick_config() if args.quick else PoolConfig()
    if args.reps is not None:
        cfg = PoolConfig(**{**cfg.__dict__, "reps": args.reps})
    if args.offline_only:
        cfg = PoolConfig(**{**cfg.__dict__, "served": False})
    print(markdown(run(args.model, cfg)))


if __name__ == "__main__":
    main()
