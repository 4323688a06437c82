"""Adaptive depth under load: ``layer: "auto"`` against a fixed layer 6, open loop at multiples of saturation.

1. saturation of fixed layer 6: closed loop, ``concurrency`` clients, requests of ``texts_per_request`` texts;
2. for each factor (0.5x, 2x, 3x, 5x, 10x of that rate) an open-loop Poisson run of ``seconds`` with
   ``layer: "auto"`` (``min_layer`` 1, ``max_latency_ms`` the target) and one with ``layer: 6``; for each:
   share of the requests sent answered 200 within the target, p50/p99 of the 200s, statuses (429s with
   Retry-After, never a 5xx), the layers served (``x-exit-layer``), and the expected quality of what was
   served: the model's ``/budgets`` ``index_quality`` at (dim, served layer) — queries at that exit against
   documents embedded at full depth — weighted by the layers served.
Optional: Infinity at the same rates (``--infinity``, from the peers venv that ``bench.prepare`` builds).
Server and load generator share the machine's cores, on loopback. Usage:
``python -m bench.adaptive [--seconds 8] [--factors 0.5 2 3 5 10] [--infinity]``.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.common import (
    DEFAULT_MODEL,
    RESULTS_DIR,
    env_line,
    environment,
    load_snapshot,
    make_texts,
    md_table,
    write_results,
)
from bench.loadgen import LoadResult, Target, closed_loop, open_loop
from bench.servers import mipic_server

# Issue 20's acceptance: at 3x the saturation of fixed layer 6, >= 95 % answered 200 within the target.
ACCEPT_FACTOR, ACCEPT_SHARE = 3.0, 0.95


@dataclass(frozen=True)
class AdaptiveConfig:
    dim: int = 384
    tokens: int = 16
    texts_per_request: int = 8
    target_ms: float = 250.0
    factors: tuple[float, ...] = (0.5, 2.0, 3.0, 5.0, 10.0)
    seconds: float = 8.0
    capacity_seconds: float = 5.0
    concurrency: int = 8
    max_requests: int = 6_000
    settle_seconds: float = 5.0


def batches(cfg: AdaptiveConfig, n: int = 64) -> list[list[str]]:
    texts = make_texts(n * cfg.texts_per_request, cfg.tokens, seed=11)
    return [texts[i: i + cfg.texts_per_request] for i in range(0, len(texts), cfg.texts_per_request)]


def index_quality(url: str, dim: int) -> dict[int, float]:
    """layer → quality of queries at (dim, layer) against a (dim, last layer) index, from ``/budgets``."""
    body = httpx.get(url + "/budgets", timeout=30).json()
    out: dict[int, float] = {}
    for b in body.get("budgets", []):
        if b["dim"] == dim:
            q = b.get("index_quality")
            out[int(b["layer"])] = float(q if q is not None else b["quality"])
    return out


def summarise(r: LoadResult, target_s: float, quality: dict[int, float]) -> dict[str, Any]:
    s = r.summary()
    s["ok_within_target_share"] = r.share_ok_within(target_s)
    s["admitted_within_target_share"] = r.share_of_ok_within(target_s)
    s["5xx"] = sum(v for k, v in r.statuses.items() if k >= 500 or k < 0)
    served = {int(k): v for k, v in r.served_layers.items()}
    n = sum(served.values())
    s["expected_index_quality"] = (sum(quality.get(ly, float("nan")) * c for ly, c in served.items()) / n
                                   if n and quality else None)
    return s


def run_mode(url: str, body: dict[str, Any], work: list[list[str]], rates: list[float], cfg: AdaptiveConfig,
             quality: dict[int, float], label: str, path: str = "/v1/embeddings") -> list[dict[str, Any]]:
    out = []
    target = Target(url, path, body)
    for i, rate in enumerate(rates):
        # settle: a previous point's backlog drains and the server's ~2 s memory of the arrival rate fades, so
        # each point shows the steady behaviour at its own rate
        time.sleep(cfg.settle_seconds)
        r = asyncio.run(open_loop(target, work, rate, cfg.seconds, cfg.max_requests, timeout_s=60, seed=i))
        s = summarise(r, cfg.target_ms / 1000, quality) | {"factor": cfg.factors[i], "mode": label}
        lat = s["latency"]
        print(f"  {label:>9} {cfg.factors[i]:>4g}x ({rate:6.1f} req/s): ok within {cfg.target_ms:g} ms "
              f"{100 * s['ok_within_target_share']:5.1f} %, p50/p99 {lat['p50_ms']:6.1f}/{lat['p99_ms']:7.1f} ms, "
              f"statuses {s['statuses']}, layers {s['served_layers']}", flush=True)
        out.append(s)
    return out


def infinity_runs(work: list[list[str]], rates: list[float], cfg: AdaptiveConfig) -> list[dict[str, Any]]:
    from bench.prepare import ensure_optimum_export, ensure_peers_env
    from bench.servers import INFINITY_MODEL_NAME, infinity_server

    ensure_peers_env()
    infinity_dir, _ = ensure_optimum_export()
    server: AbstractContextManager[tuple[str, int]] = infinity_server(infinity_dir)
    with server as (url, _pid):
        # Infinity serves its OpenAI-style route without the /v1 prefix (as bench.peers calls it)
        return run_mode(url, {"model": INFINITY_MODEL_NAME}, work, rates, cfg, {}, "infinity", path="/embeddings")


def run(model_dir: Path, cfg: AdaptiveConfig, with_infinity: bool = False,
        results_dir: Path | None = None) -> dict[str, Any]:
    load = load_snapshot()
    work = batches(cfg)
    with mipic_server(model_dir) as (url, _pid):
        quality = index_quality(url, cfg.dim)
        fixed_body = {"dimensions": cfg.dim, "layer": 6}
        target = Target(url, "/v1/embeddings", fixed_body)
        asyncio.run(closed_loop(target, work, cfg.concurrency, 1.0))  # warm
        cap = asyncio.run(closed_loop(target, work, cfg.concurrency, cfg.capacity_seconds)).summary()
        sat = cap["achieved_rps"]
        print(f"saturation, fixed layer 6: {sat:.1f} req/s ({sat * cfg.texts_per_request:.0f} texts/s)", flush=True)
        rates = [f * sat for f in cfg.factors]
        auto_body = {"dimensions": cfg.dim, "layer": "auto", "min_layer": 1, "max_latency_ms": cfg.target_ms}
        runs = run_mode(url, auto_body, work, rates, cfg, quality, "auto")
        runs += run_mode(url, fixed_body, work, rates, cfg, quality, "fixed l6")
    if with_infinity:
        runs += infinity_runs(work, rates, cfg)
    payload = {"env": environment(), "load_at_start": load, "config": cfg.__dict__, "model_dir": str(model_dir),
               "saturation_rps": sat, "capacity": cap, "index_quality": quality, "runs": runs}
    out = results_dir or RESULTS_DIR
    write_results("adaptive", payload, markdown(payload), out)
    plot(payload, out / "adaptive.png")
    return payload


def target_rows(payload: dict[str, Any]) -> list[list[Any]]:
    """Issue 20's targets as (asked, measured, met) rows for the bench summary."""
    rows: list[list[Any]] = []
    target = payload["config"]["target_ms"]
    for r in payload["runs"]:
        if r["mode"] != "auto":
            continue
        if r["factor"] == ACCEPT_FACTOR:
            share = r["ok_within_target_share"]
            rows.append([f"layer auto at {ACCEPT_FACTOR:g}x fixed layer 6's saturation: >= {100 * ACCEPT_SHARE:.0f} % "
                         f"answered 200 within {target:g} ms, 0 x 5xx",
                         f"{100 * share:.1f} %, {r['5xx']} x 5xx",
                         "yes" if share >= ACCEPT_SHARE and r["5xx"] == 0 else "**no**"])
        if r["factor"] > ACCEPT_FACTOR:
            admitted = r.get("admitted_within_target_share")
            if admitted is not None:
                rows.append([f"layer auto at {r['factor']:g}x: what is admitted (200) answered within {target:g} ms, "
                             "the rest 429, 0 x 5xx",
                             f"{100 * admitted:.1f} % of {r['ok']} 200s, {r['statuses'].get('429', 0)} x 429, "
                             f"{r['5xx']} x 5xx", "yes" if admitted >= ACCEPT_SHARE and r["5xx"] == 0 else "**no**"])
        if r["factor"] <= 0.5:
            deepest = r["served_layers"].get("6", 0) / max(1, r["ok"])
            rows.append([f"layer auto at {r['factor']:g}x: >= 99 % served at max_layer", f"{100 * deepest:.1f} %",
                         "yes" if deepest >= 0.99 else "**no**"])
    return rows


def _rows(payload: dict[str, Any]) -> Iterator[list[Any]]:
    cfg = payload["config"]
    for r in sorted(payload["runs"], key=lambda r: (r["factor"], r["mode"])):
        lat = r["latency"]
        q = r.get("expected_index_quality")
        server = r.get("server_latency")
        admitted = r.get("admitted_within_target_share")
        yield [f"{r['factor']:g}x", r["mode"], f"{r['offered_rps'] * cfg['texts_per_request']:.0f}",
               f"{100 * r['ok_within_target_share']:.1f}",
               f"{100 * admitted:.1f}" if admitted is not None else "-",
               f"{lat['p50_ms']:.0f}", f"{lat['p99_ms']:.0f}",
               f"{server['p50_ms']:.0f} / {server['p99_ms']:.0f}" if server else "-", r.get("late_sends", "-"),
               r["statuses"].get("429", 0), r["5xx"],
               ", ".join(f"{k}: {v}" for k, v in r["served_layers"].items()) or "-",
               f"{q:.3f}" if q is not None else "-"]


def markdown(payload: dict[str, Any]) -> str:
    cfg = payload["config"]
    env = payload["env"]
    q = payload["index_quality"]
    head = (f"Adaptive depth under open-loop load, {cfg['texts_per_request']} texts of ~{cfg['tokens']} tokens per "
            f"request, dim {cfg['dim']}, target {cfg['target_ms']:g} ms, {cfg['seconds']:g} s per point; saturation "
            f"of fixed layer 6: {payload['saturation_rps']:.1f} req/s "
            f"({payload['saturation_rps'] * cfg['texts_per_request']:.0f} texts/s). {env_line(env)}; "
            f"load at start {payload['load_at_start']}.\n\n"
            "Quality = the model's index_quality at (dim, layer served), queries at that exit against documents at "
            "(dim, last layer), weighted by the layers served; per layer: "
            + ", ".join(f"{k}: {v:.3f}" for k, v in sorted(q.items())) + ". Latencies are the client's, from each "
            "request's scheduled send to its answer; the server's own (x-total-time: handler start to answer) "
            "leaves out the event loop's queue before the handler, the kernel and the load generator, which "
            "share the same cores; late sends = requests the load generator sent > 5 ms after their schedule.\n\n")
    return head + md_table(["load", "mode", "offered texts/s", f"% of sent: 200 within {cfg['target_ms']:g} ms",
                            f"% of 200s within {cfg['target_ms']:g} ms", "p50 ms", "p99 ms",
                            "server p50 / p99 ms (x-total-time)", "late sends", "429", "5xx", "layers served (200s)",
                            "quality"], list(_rows(payload)))


def plot(payload: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = sorted({r["mode"] for r in payload["runs"]})
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(15, 4.2))
    for mode in modes:
        rs = sorted((r for r in payload["runs"] if r["mode"] == mode), key=lambda r: r["factor"])
        xs = [r["factor"] for r in rs]
        a.plot(xs, [100 * r["ok_within_target_share"] for r in rs], "o-", label=mode)
        b.plot(xs, [r["latency"]["p99_ms"] for r in rs], "o-", label=mode)
        qs = [r.get("expected_index_quality") for r in rs]
        if all(q is not None for q in qs):
            c.plot(xs, qs, "o-", label=mode)
    target = payload["config"]["target_ms"]
    a.set(xscale="log", xlabel="offered load / saturation of fixed layer 6",
          ylabel=f"% answered 200 within {target:g} ms", ylim=(0, 102))
    b.set(xscale="log", yscale="log", xlabel="offered load / saturation", ylabel="p99 of 200s (ms)")
    b.axhline(target, color="grey", ls="--", lw=1)
    c.set(xscale="log", xlabel="offered load / saturation", ylabel="expected index quality of what was served")
    for ax in (a, b, c):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"layer \"auto\" vs fixed layer 6 ({env_line(payload['env'])})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--seconds", type=float, default=AdaptiveConfig.seconds)
    ap.add_argument("--factors", type=float, nargs="+", default=list(AdaptiveConfig.factors))
    ap.add_argument("--texts-per-request", type=int, default=AdaptiveConfig.texts_per_request)
    ap.add_argument("--infinity", action="store_true", help="also Infinity at the same rates (builds the peers venv)")
    args = ap.parse_args()
    cfg = AdaptiveConfig(seconds=args.seconds, factors=tuple(args.factors), texts_per_request=args.texts_per_request)
    payload = run(args.model, cfg, args.infinity)
    auto = [r for r in payload["runs"] if r["mode"] == "auto" and r["factor"] == ACCEPT_FACTOR]
    if auto:
        print(f"acceptance at {ACCEPT_FACTOR:g}x: {100 * auto[0]['ok_within_target_share']:.1f} % within target "
              f"(wanted >= {100 * ACCEPT_SHARE:.0f} %), 5xx {auto[0]['5xx']}")


if __name__ == "__main__":
    main()
