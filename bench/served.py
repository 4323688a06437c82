"""Served throughput and latency: ``mipic serve`` in a child process, an open-loop Poisson load generator here.

For each (dim, layer) budget the offered rate rises as fractions of the offline engine's best throughput
for that budget (same texts, pre-tokenized, in this process before the server starts), so the last
points drive the server to saturation. "Served / offline" at saturation is what HTTP, JSON, tokenization
and the batcher cost. Then one longer run at half the measured saturation rate gives the latency target's
p50/p95/p99, next to the compute time of one request's batch (the same texts, offline). Server and load
generator share the machine's cores; both are on loopback; each point records the CPU both used.
Usage: ``python -m bench.served [--quick]``.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import os
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
    md_table,
    request_batches,
    time_calls,
    write_results,
)
from bench.loadgen import Target, closed_loop, open_loop
from bench.servers import mipic_server

Budget = tuple[int, int]  # (dim, layer)
# Targets (issue 13): served / offline at saturation, and p99 at half the saturation rate as a multiple of the
# compute time of one request's batch.
SERVED_TARGETS: dict[Budget, float] = {(384, 6): 0.90, (64, 1): 0.75}
LATENCY_TARGET = 3.0
LATENCY_BUDGETS: tuple[Budget, ...] = ((384, 6), (64, 3))


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
    half_seconds: float = 30.0  # the latency run at half the saturation rate (~700 requests at d384/l6)


def md1_p99(rho: float, n: int = 200_000, seed: int = 0) -> float:
    """The p99 of the time in system of an M/D/1 queue at utilisation ``rho``, in service times: Poisson
    arrivals served first come first served, each taking exactly one service time (Lindley's recursion over
    ``n`` simulated arrivals). The floor for any server that answers requests in order, one at a time, when
    batching does not make a text cheaper: at ``rho`` 0.5 about 4.3 (p50 1.0, p95 3.0)."""
    if not 0.0 < rho < 1.0:
        raise ValueError(f"rho must be in (0, 1), got {rho}")
    gaps = np.random.default_rng(seed).exponential(1.0 / rho, n)
    wait, sojourn = 0.0, np.empty(n)
    for i, gap in enumerate(gaps):
        wait = max(0.0, wait + 1.0 - gap) if i else 0.0
        sojourn[i] = wait + 1.0
    return float(np.percentile(sojourn, 99))


def offline_reference(model_dir: Path, cfg: ServedConfig) -> dict[Budget, dict[str, float]]:
    """Per budget: the best pre-tokenized ``LoadedModel.run`` throughput over ``offline_batches`` (same
    texts), and the median time of one request's batch (``texts_per_request`` texts) over the request batches."""
    from mipic.modeldir.runner import LoadedModel, Row

    model = LoadedModel(model_dir, provider="cpu", verify_checksums=False)
    requests = request_batches(cfg.texts_per_request, cfg.tokens)
    texts = [t for b in requests for t in b]
    ids = [e.ids for e in model.tokenizer.encode(texts)]
    k = cfg.texts_per_request
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
            singles = []
            for r in range(len(requests)):
                rows = [Row(ids=i, dim=dim, layer=layer) for i in ids[r * k: (r + 1) * k]]
                singles += time_calls(functools.partial(model.run, rows), 0.0, 1, warmup=1 if r == 0 else 0)
            best["one_request_ms"] = 1000.0 * float(np.median(singles))
            out[(dim, layer)] = best
    finally:
        model.close()
        gc.collect()
    return out


def stat_cpu_seconds(stat_file: Path) -> float:
    """utime + stime from a ``/proc`` ``stat`` file (a process's, or one thread's under ``task/``)."""
    stat = stat_file.read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from ``/proc/PID/stat``."""
    return stat_cpu_seconds(Path(f"/proc/{pid}/stat"))


def measured_point(target: Target, batches: list[list[str]], rate_rps: float, seconds: float, max_requests: int,
                   seed: int, server_pid: int | None) -> dict[str, Any]:
    """One open-loop run, with the CPU the load generator (this process) and the server used during it, in %
    of one core."""
    cpu0, srv0, t0 = time.process_time(), process_cpu_seconds(server_pid) if server_pid else 0.0, time.perf_counter()
    r = asyncio.run(open_loop(target, batches, rate_rps, seconds, max_requests, seed=seed)).summary()
    wall = time.perf_counter() - t0
    r["loadgen_cpu_pct"] = 100.0 * (time.process_time() - cpu0) / wall
    if server_pid:
        r["server_cpu_pct"] = 100.0 * (process_cpu_seconds(server_pid) - srv0) / wall
    return r


def sweep(target: Target, batches: list[list[str]], rates_rps: list[float], seconds: float, max_requests: int,
          label: str, server_pid: int | None = None) -> list[dict[str, Any]]:
    """One open-loop run per offered rate, lowest first; a short closed-loop warm-up before the first."""
    asyncio.run(closed_loop(target, batches, 4, min(1.0, seconds / 2)))
    out = []
    for i, rate in enumerate(rates_rps):
        r = measured_point(target, batches, rate, seconds, max_requests, i, server_pid)
        lat = r["latency"]
        print(f"  {label} offered {r['offered_texts_per_s']:8.1f} texts/s → {r['achieved_texts_per_s']:8.1f} "
              f"p50 {lat['p50_ms']:7.1f} p99 {lat['p99_ms']:7.1f} ms statuses {r['statuses']} "
              f"(load generator {r['loadgen_cpu_pct']:.0f}% of a core)", flush=True)
        out.append(r)
    return out


def saturation(points: list[dict[str, Any]]) -> dict[str, Any]:
    """The point with the highest achieved throughput (all answers OK)."""
    return max(points, key=lambda p: p["achieved_texts_per_s"])


def run(model_dir: Path, cfg: ServedConfig, results_dir: Path | None = None, name: str = "served") -> dict[str, Any]:
    load = load_snapshot()
    env = environment()
    offline = offline_reference(model_dir, cfg)
    batches = request_batches(cfg.texts_per_request, cfg.tokens)
    results: list[dict[str, Any]] = []
    load_server = load_snapshot()
    with mipic_server(model_dir, dict(cfg.extra_env)) as (url, pid):
        for dim, layer in cfg.budgets:
            ref = offline[(dim, layer)]["texts_per_s"]
            rates = [f * ref / cfg.texts_per_request for f in cfg.fractions]
            target = Target(url, "/v1/embeddings", {"dimensions": dim, "layer": layer})
            points = sweep(target, batches, rates, cfg.seconds, cfg.max_requests, f"mipic d={dim} l={layer}", pid)
            sat = saturation(points)
            half_rate = 0.5 * sat["achieved_texts_per_s"] / cfg.texts_per_request
            half = measured_point(target, batches, half_rate, cfg.half_seconds, cfg.max_requests, 99, pid)
            one = offline[(dim, layer)]["one_request_ms"]
            rho = half["offered_texts_per_s"] / sat["achieved_texts_per_s"]
            print(f"  half saturation {half['offered_texts_per_s']:.1f} texts/s: p50/p95/p99 "
                  f"{half['latency']['p50_ms']:.1f}/{half['latency']['p95_ms']:.1f}/{half['latency']['p99_ms']:.1f} ms "
                  f"(one request's batch {one:.1f} ms)", flush=True)
            results.append({"dim": dim, "layer": layer, "offline_texts_per_s": ref,
                            "offline_batch": int(offline[(dim, layer)]["batch"]), "points": points,
                            "saturation_texts_per_s": sat["achieved_texts_per_s"],
                            "served_over_offline": sat["achieved_texts_per_s"] / ref,
                            "saturation_loadgen_cpu_pct": sat["loadgen_cpu_pct"],
                            "saturation_server_cpu_pct": sat.get("server_cpu_pct"),
                            "one_request_ms": one, "half_saturation": half,
                            "p99_over_one_request": half["latency"]["p99_ms"] / one,
                            "md1_p99_floor": md1_p99(min(0.99, max(0.01, rho)))})
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
                         lat["p50_ms"], lat["p95_ms"], lat["p99_ms"], f"{p.get('loadgen_cpu_pct', 0):.0f}%",
                         f"{p.get('server_cpu_pct', 0):.0f}%",
                         ", ".join(f"{k}: {v}" for k, v in p["statuses"].items())])
    summary = []
    for r in payload["results"]:
        want = SERVED_TARGETS.get((r["dim"], r["layer"]))
        ratio = r["served_over_offline"]
        mark = "" if want is None else (f" (target ≥ {100 * want:.0f}%)" + ("" if ratio >= want else " ✗"))
        summary.append([f"d{r['dim']}/l{r['layer']}", r["offline_texts_per_s"], r["offline_batch"],
                        r["saturation_texts_per_s"], f"{100 * ratio:.0f}%{mark}",
                        f"{r.get('saturation_loadgen_cpu_pct', 0):.0f}%"])
    latency = []
    for r in payload["results"]:
        if "half_saturation" not in r:
            continue
        h, lat = r["half_saturation"], r["half_saturation"]["latency"]
        target = (r["dim"], r["layer"]) in LATENCY_BUDGETS
        ok = r["p99_over_one_request"] <= LATENCY_TARGET
        latency.append([f"d{r['dim']}/l{r['layer']}", h["offered_texts_per_s"], h["achieved_texts_per_s"],
                        lat["p50_ms"], lat["p95_ms"], lat["p99_ms"], r["one_request_ms"],
                        f"{r['p99_over_one_request']:.1f}×" + (f" (target ≤ {LATENCY_TARGET:g}×)" + ("" if ok else " ✗")
                                                                if target else ""),
                        f"{r['md1_p99_floor']:.1f}×" if "md1_p99_floor" in r else "",
                        f"{h.get('loadgen_cpu_pct', 0):.0f}%"])
    return (f"HTTP `POST /v1/embeddings` (with `dimensions`, `layer`), open loop (Poisson arrivals), "
            f"{cfg['texts_per_request']} texts of ~{cfg['tokens']} tokens per request, {cfg['seconds']:g} s per "
            f"offered rate; latency from the scheduled send time. Server (`mipic serve`, default settings) and load "
            f"generator (aiohttp, this process) share the machine: {env_line(env)}. Load average at start: "
            f"{load['loadavg'][0]:.2f}. CPU columns: % of one core used during the point (2 cores = 200%).\n\n"
            + md_table(["budget", "offline texts/s", "offline batch", "served texts/s at saturation",
                        "served / offline", "load generator CPU at saturation"], summary)
            + f"\nAt half the saturation rate ({cfg.get('half_seconds', 0):g} s, open loop); one request's batch = "
              f"median offline time of `LoadedModel.run` on one request's {cfg['texts_per_request']} texts. The M/D/1 "
              "floor is the p99 any first-come-first-served server reaches at this utilisation with Poisson "
              "arrivals and a fixed time per request (`md1_p99`): a p99 target below it cannot be met by "
              "scheduling alone:\n\n"
            + md_table(["budget", "offered texts/s", "achieved texts/s", "p50 ms", "p95 ms", "p99 ms",
                        "one request's batch ms", "p99 / one request's batch",
                        "M/D/1 floor (p99 / service time at this load)", "load generator CPU"], latency)
            + "\n" + md_table(["budget", "offered texts/s", "achieved texts/s", "p50 ms", "p95 ms", "p99 ms",
                                "load generator CPU", "server CPU", "statuses"], rows))


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
                        offline_batches=(32,), half_seconds=1.0)


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
