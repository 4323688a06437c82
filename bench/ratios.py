"""Speed ratios that can be believed: each the median of ≥ 5 interleaved repetitions, with its spread.

One rep measures, in an order that rotates from rep to rep (so no variant always runs first, or right after
the same neighbour):
- mipic over HTTP at saturation (closed loop, ``concurrency`` clients of ``texts_per_request`` ~16-token
  texts, OpenAI surface) at every budget of ``http_budgets``,
- Infinity over HTTP at saturation, same texts, load and surface (``dimensions``), at every dim of them,
- mipic's offline engine (``LoadedModel.run``, pre-tokenized, best of the ``offline_batches``) at every budget,
- the same for mipic served by ``workers`` processes (``mipic serve --workers N``, one onnxruntime thread each
  on 2 cores) for every N of ``extra_workers``, under keys ``mipic_wN_…``,
- the latency of every server at the same open-loop offered rates (fractions of the *lower* saturation of
  mipic's single process and Infinity, measured in the first rep), at the full budget.
Both servers stay up for the whole run (the idle one costs nothing measurable: both wait on a socket).
Each rep yields one value of every ratio — mipic/Infinity, served/offline, served layer 1 / layer 6 — from
measurements taken minutes apart at most; the table gives the median and the (min–max) spread of those
per-rep ratios, and a target is met only when the spread's *lower* end meets it.
Usage: ``python -m bench.ratios [--quick] [--reps N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

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

Budget = tuple[int, int]  # (dim, layer)
T = TypeVar("T")


@dataclass(frozen=True)
class RatiosConfig:
    reps: int = 5
    http_budgets: tuple[Budget, ...] = ((384, 6), (64, 6), (64, 1))
    tokens: int = 16
    texts_per_request: int = 8
    concurrency: int = 32  # clients at saturation: 256 texts in flight, twice the largest batch either server forms
    seconds: float = 6.0  # per saturation measurement
    offline_batches: tuple[int, ...] = (32, 128)
    offline_seconds: float = 1.5
    latency_fractions: tuple[float, ...] = (0.5, 0.75)  # of the lower saturation, full budget
    latency_seconds: float = 6.0
    infinity: bool = True
    extra_workers: tuple[int, ...] = (2,)  # mipic also served by this many worker processes (``--workers``)
    # targets (issue 19): (name, ratio key, bound)
    targets: tuple[tuple[str, str, float], ...] = field(default=(
        ("≥ 1.5× Infinity over HTTP at saturation, d384/l6 (fp32 vs fp32)", "http_vs_infinity_d384_l6", 1.5),
        ("≥ 1.5× Infinity over HTTP at saturation, d64/l6 (fp32 vs fp32)", "http_vs_infinity_d64_l6", 1.5),
        ("≥ 1.2× Infinity at equal precision, d384/l6", "http_vs_infinity_d384_l6", 1.2),
        ("≥ 1.2× Infinity at equal precision, d64/l6", "http_vs_infinity_d64_l6", 1.2),
        ("served/offline ≥ 90 % at d384/l6", "served_over_offline_d384_l6", 0.90),
        ("served/offline ≥ 75 % at d64/l1", "served_over_offline_d64_l1", 0.75),
        ("served layer 1 ≥ 4× served layer 6 (d64)", "served_l1_over_l6_d64", 4.0),
        ("2 workers: ≥ 1.5× Infinity over HTTP at saturation, d384/l6", "w2_http_vs_infinity_d384_l6", 1.5),
        ("2 workers: ≥ 1.5× Infinity over HTTP at saturation, d64/l6", "w2_http_vs_infinity_d64_l6", 1.5),
        ("2 workers: ≥ 1.2× Infinity at equal precision, d384/l6", "w2_http_vs_infinity_d384_l6", 1.2),
        ("2 workers: ≥ 1.2× Infinity at equal precision, d64/l6", "w2_http_vs_infinity_d64_l6", 1.2),
        ("2 workers: served/offline ≥ 90 % at d384/l6", "w2_served_over_offline_d384_l6", 0.90),
        ("2 workers: served/offline ≥ 75 % at d64/l1", "w2_served_over_offline_d64_l1", 0.75),
        ("2 workers: served layer 1 ≥ 4× served layer 6 (d64)", "w2_served_l1_over_l6_d64", 4.0),
    ))


# --------------------------------------------------------------------------- statistics


@dataclass(frozen=True)
class Spread:
    """The median of per-rep values and their range; ``met(bound)`` only when the lower end reaches it."""

    values: tuple[float, ...]

    @property
    def median(self) -> float:
        return float(statistics.median(self.values))

    @property
    def low(self) -> float:
        return float(min(self.values))

    @property
    def high(self) -> float:
        return float(max(self.values))

    def met(self, bound: float) -> bool:
        return self.low >= bound

    def as_dict(self) -> dict[str, Any]:
        return {"median": self.median, "low": self.low, "high": self.high, "values": list(self.values)}

    def text(self, fmt: str = "{:.2f}") -> str:
        return f"{fmt.format(self.median)} ({fmt.format(self.low)}–{fmt.format(self.high)})"


def paired_ratios(num: Sequence[float], den: Sequence[float]) -> Spread:
    """Per-rep ratios ``num[i] / den[i]`` (both measured in rep i, minutes apart at most)."""
    if len(num) != len(den) or not num:
        raise ValueError(f"paired ratios need two equal, non-empty series, got {len(num)} and {len(den)}")
    return Spread(tuple(float(a) / float(b) for a, b in zip(num, den, strict=True)))


def merge_runs(runs: Sequence[dict[str, Any]], median_keys: Sequence[str] = ("texts_per_s",),
               sum_keys: Sequence[str] = ()) -> dict[str, Any]:
    """Repetitions of one measurement (each ``{"points": [...], ...}``, the same points in the same order) → the
    first run with each point's ``median_keys`` the median over runs, ``sum_keys`` summed, and every run's
    ``texts_per_s`` kept as ``texts_per_s_reps`` (in rep order, for :func:`paired_ratios`); plus ``reps``. A run
    without points (it failed) is returned as it is."""
    failed = next((r for r in runs if "points" not in r), None)
    if failed is not None:
        return dict(failed)
    points = []
    for i, p in enumerate(runs[0]["points"]):
        merged = {**p, "texts_per_s_reps": [float(r["points"][i]["texts_per_s"]) for r in runs]}
        merged.update({k: float(statistics.median(float(r["points"][i][k]) for r in runs)) for k in median_keys})
        merged.update({k: sum(r["points"][i][k] for r in runs) for k in sum_keys})
        points.append(merged)
    return {**runs[0], "points": points, "reps": len(runs)}


def rotated(names: Sequence[T], rep: int) -> list[T]:
    """``names`` rotated by ``rep`` places: each variant runs at every position across reps."""
    k = rep % len(names) if names else 0
    return [*names[k:], *names[:k]]


# --------------------------------------------------------------------------- measurements


def saturation_texts_per_s(url: str, path: str, body: dict[str, Any], batches: list[list[str]],
                           cfg: RatiosConfig) -> float:
    """Closed-loop throughput (200s only) of ``cfg.concurrency`` clients for ``cfg.seconds``."""
    from bench.loadgen import Target, closed_loop

    r = asyncio.run(closed_loop(Target(url, path, body), batches, cfg.concurrency, cfg.seconds))
    bad = {k: v for k, v in r.statuses.items() if k != 200}
    if bad:
        raise RuntimeError(f"{url}{path} {body}: non-200 answers at saturation: {bad}")
    return r.ok * r.texts_per_request / r.duration_s


def latency_point(url: str, path: str, body: dict[str, Any], batches: list[list[str]], rate_rps: float,
                  seconds: float, seed: int) -> dict[str, float]:
    from bench.loadgen import Target, open_loop

    r = asyncio.run(open_loop(Target(url, path, body), batches, rate_rps, seconds, 100_000, seed=seed)).summary()
    return {"p50_ms": r["latency"]["p50_ms"], "p99_ms": r["latency"]["p99_ms"],
            "ok_share": r["ok"] / max(1, r["sent"])}


class Offline:
    """mipic's engine in this process: best throughput over the offline batches, same texts as the load."""

    def __init__(self, model_dir: Path, texts: list[str], cfg: RatiosConfig) -> None:
        from mipic.modeldir.runner import LoadedModel

        self.model = LoadedModel(model_dir, provider="cpu", verify_checksums=False)
        self.ids = [e.ids for e in self.model.tokenizer.encode(texts)]
        self.cfg = cfg

    def texts_per_s(self, dim: int, layer: int) -> float:
        from mipic.modeldir.runner import Row

        best = 0.0
        for b in self.cfg.offline_batches:
            rows = [Row(ids=i, dim=dim, layer=layer) for i in self.ids[:b]]
            times = time_calls(functools.partial(self.model.run, rows), self.cfg.offline_seconds, 2, warmup=1)
            best = max(best, b / float(np.median(times)))
        return best

    def close(self) -> None:
        self.model.close()


def run(model_dir: Path, cfg: RatiosConfig, results_dir: Path | None = None, name: str = "ratios") -> dict[str, Any]:
    from bench.prepare import ensure_optimum_export
    from bench.servers import INFINITY_MODEL_NAME, infinity_server, mipic_server

    load = load_snapshot()
    env = environment()
    batches = request_batches(cfg.texts_per_request, cfg.tokens)
    offline = Offline(model_dir, [t for b in batches for t in b], cfg)
    full = max(cfg.http_budgets, key=lambda b: (b[1], b[0]))
    latency: dict[str, list[dict[str, float]]] = {}
    t0 = time.perf_counter()
    with contextlib.ExitStack() as stack:
        m_urls = {1: stack.enter_context(mipic_server(model_dir))[0]}
        for n in cfg.extra_workers:
            m_urls[n] = stack.enter_context(mipic_server(model_dir, {"MIPIC_WORKERS": str(n)}))[0]
        i_url = stack.enter_context(infinity_server(ensure_optimum_export()[0]))[0] if cfg.infinity else None
        loads: dict[str, tuple[str, str, dict[str, Any]]] = {}  # HTTP measurements: name → (url, path, body)
        for n, m_url in m_urls.items():
            for dim, layer in cfg.http_budgets:
                loads[f"{mipic_key(n)}_http_d{dim}_l{layer}"] = (m_url, "/v1/embeddings",
                                                                 {"dimensions": dim, "layer": layer})
        if i_url is not None:  # Infinity has no early exit: its dims at the full depth only
            for dim in sorted({d for d, layer in cfg.http_budgets if layer == full[1]}):
                body = {"model": INFINITY_MODEL_NAME, "dimensions": dim}
                loads[f"infinity_http_d{dim}"] = (i_url, "/embeddings", body)
        warm = RatiosConfig(**{**cfg.__dict__, "seconds": 1.0})
        for url, path, body in loads.values():
            saturation_texts_per_s(url, path, body, batches, warm)
        steps: dict[str, Callable[[], float]] = {
            k: functools.partial(saturation_texts_per_s, *v, batches, cfg) for k, v in loads.items()}
        for dim, layer in cfg.http_budgets:
            steps[f"offline_d{dim}_l{layer}"] = functools.partial(offline.texts_per_s, dim, layer)
        servers = [(mipic_key(n), *loads[f"{mipic_key(n)}_http_d{full[0]}_l{full[1]}"]) for n in m_urls]
        if i_url is not None:
            servers.append(("infinity", *loads[f"infinity_http_d{full[0]}"]))
        values: dict[str, list[float]] = {k: [] for k in steps}
        rates: list[float] = []
        for rep in range(cfg.reps):
            print(f"ratios: rep {rep + 1}/{cfg.reps} ({time.perf_counter() - t0:.0f} s)", flush=True)
            for step in rotated(list(steps), rep):
                values[step].append(float(steps[step]()))
            if not rates:  # the latency comparison's offered rates, fixed from the first rep's saturations
                full_keys = [f"mipic_http_d{full[0]}_l{full[1]}", f"infinity_http_d{full[0]}"]
                lower = min(values[k][0] for k in full_keys if k in values)
                rates = [f * lower / cfg.texts_per_request for f in cfg.latency_fractions]
            for who, url, path, body in rotated(servers, rep):
                for j, rate in enumerate(rates):
                    point = latency_point(url, path, body, batches, rate, cfg.latency_seconds, seed=100 * rep + j)
                    latency.setdefault(f"{who}@{cfg.latency_fractions[j]}", []).append(
                        {**point, "offered_texts_per_s": rate * cfg.texts_per_request})
    offline.close()
    ratios = ratio_table(values, cfg)
    payload = {"env": env, "load_at_start": load, "model_dir": str(model_dir), "config": config_dict(cfg),
               "values": values, "ratios": {k: v.as_dict() for k, v in ratios.items()},
               "targets": [{"target": t, "key": k, "bound": b, "median": ratios[k].median, "low": ratios[k].low,
                            "high": ratios[k].high, "met": ratios[k].met(b)}
                           for t, k, b in cfg.targets if k in ratios],
               "latency": latency, "seconds": time.perf_counter() - t0}
    write_results(name, payload, markdown(payload), results_dir or RESULTS_DIR)
    return payload


def mipic_key(workers: int) -> str:
    """The series name of mipic served by ``workers`` processes: ``mipic`` for one (the default server)."""
    return "mipic" if workers == 1 else f"mipic_w{workers}"


def ratio_table(values: dict[str, list[float]], cfg: RatiosConfig) -> dict[str, Spread]:
    """Every ratio this section reports, per rep, from the measured series; the multi-worker server's ratios
    are prefixed ``wN_`` (and ``wN_over_w1_…`` compares it with one process)."""
    out: dict[str, Spread] = {}
    for n in (1, *cfg.extra_workers):
        name, prefix = mipic_key(n), "" if n == 1 else f"w{n}_"
        for dim, layer in cfg.http_budgets:
            served, offline = values.get(f"{name}_http_d{dim}_l{layer}"), values.get(f"offline_d{dim}_l{layer}")
            if served and offline:
                out[f"{prefix}served_over_offline_d{dim}_l{layer}"] = paired_ratios(served, offline)
            inf = values.get(f"infinity_http_d{dim}")
            if served and inf and layer == max(b[1] for b in cfg.http_budgets):
                out[f"{prefix}http_vs_infinity_d{dim}_l{layer}"] = paired_ratios(served, inf)
            one = values.get(f"mipic_http_d{dim}_l{layer}")
            if n != 1 and served and one:
                out[f"{prefix}over_w1_d{dim}_l{layer}"] = paired_ratios(served, one)
        for dim in {d for d, _ in cfg.http_budgets}:
            layers = sorted(layer for d, layer in cfg.http_budgets if d == dim)
            lo_key, hi_key = (f"{name}_http_d{dim}_l{layers[0]}", f"{name}_http_d{dim}_l{layers[-1]}")
            if len(layers) >= 2 and lo_key in values and hi_key in values:
                out[f"{prefix}served_l{layers[0]}_over_l{layers[-1]}_d{dim}"] = paired_ratios(
                    values[lo_key], values[hi_key])
    return out


def config_dict(cfg: RatiosConfig) -> dict[str, Any]:
    return {k: v for k, v in cfg.__dict__.items() if k != "targets"}


def markdown(payload: dict[str, Any]) -> str:
    cfg = payload["config"]
    spreads = {k: Spread(tuple(v["values"])) for k, v in payload["ratios"].items()}
    values = {k: Spread(tuple(v)) for k, v in payload["values"].items()}
    lines = [
        f"Speed ratios, each the median of {cfg['reps']} interleaved repetitions (min–max of the per-rep ratios in "
        f"brackets; a target is met only when the lower end meets it). {env_line(payload['env'])}. Load average at "
        f"start: {payload['load_at_start']['loadavg'][0]}. Over HTTP: closed loop, {cfg['concurrency']} clients × "
        f"{cfg['texts_per_request']} ~{cfg['tokens']}-token texts, {cfg['seconds']} s per measurement, server and load "
        f"generator on the same cores; both at fp32. {payload['seconds']:.0f} s in all.", "",
        md_table(["measurement", "texts/s: median (min–max)"], [[k, v.text("{:,.0f}")] for k, v in values.items()]), "",
        md_table(["ratio", "median (min–max)"], [[k, v.text()] for k, v in spreads.items()]), "",
        md_table(["target", "median", "lower end", "met"],
                 [[t["target"], f"{t['median']:.2f}", f"{t['low']:.2f}", "yes" if t["met"] else "no"]
                  for t in payload["targets"]]),
    ]
    if payload["latency"]:
        rows = []
        for key, pts in payload["latency"].items():
            who, frac = key.split("@")
            p50 = Spread(tuple(p["p50_ms"] for p in pts))
            p99 = Spread(tuple(p["p99_ms"] for p in pts))
            rows.append([who, float(frac), f"{pts[0]['offered_texts_per_s']:.0f}", p50.text("{:.0f}"),
                         p99.text("{:.0f}")])
        lines += ["", "Latency at the same offered rates (fractions of the lower of the two saturations in rep 1), "
                  "full budget, open-loop Poisson, ms: median (min–max) over reps:", "",
                  md_table(["server", "fraction", "texts/s offered", "p50 ms", "p99 ms"], rows)]
    return "\n".join(lines) + "\n"


def quick_config() -> RatiosConfig:
    return RatiosConfig(reps=2, http_budgets=((64, 6), (64, 1)), seconds=0.5, offline_batches=(8,),
                        offline_seconds=0.1, latency_fractions=(0.5,), latency_seconds=0.5, infinity=False,
                        extra_workers=(2,))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--skip-infinity", action="store_true")
    args = parser.parse_args()
    cfg = quick_config() if args.quick else RatiosConfig()
    if args.reps is not None:
        cfg = RatiosConfig(**{**cfg.__dict__, "reps": args.reps})
    if args.skip_infinity:
        cfg = RatiosConfig(**{**cfg.__dict__, "infinity": False})
    run(args.model, cfg)


if __name__ == "__main__":
    main()
