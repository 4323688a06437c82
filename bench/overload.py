"""Overload soak: offer several times the measured capacity for a bounded time, then check recovery.

1. capacity: closed loop, ``concurrency`` clients, for ``seconds`` → requests/s the server sustains;
2. burst: open loop (Poisson arrivals) at ``factor`` × capacity for ``burst_seconds`` (bounded count);
   the server must shed with 429 + Retry-After, keep admitted latency bounded, not grow without bound;
3. recovery: closed loop again → throughput back near capacity, no 429.
Loopback only; every loop is bounded in count and time. Usage:
``python -m bench.overload [--model DIR] [--factor 8] [--burst-seconds 8]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.common import environment, make_texts, md_table, percentiles, write_results
from bench.servers import free_port, start_server


@dataclass
class Phase:
    statuses: Counter[int] = field(default_factory=Counter)
    latencies_ok: list[float] = field(default_factory=list)
    server_latencies_ok: list[float] = field(default_factory=list)
    retry_after_missing: int = 0
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        ok = self.statuses.get(200, 0)
        return {"statuses": dict(self.statuses), "ok_per_s": ok / self.seconds if self.seconds else 0.0,
                "retry_after_missing": self.retry_after_missing,
                **({"ok_latency": percentiles(self.latencies_ok)} if self.latencies_ok else {}),
                **({"ok_server_latency": percentiles(self.server_latencies_ok)} if self.server_latencies_ok else {})}


async def _one(client: httpx.AsyncClient, texts: list[str], phase: Phase) -> None:
    t0 = time.perf_counter()
    try:
        r = await client.post("/embed?dim=64&layer=6", json={"inputs": texts})
        status = r.status_code
        if status in (429, 503) and "retry-after" not in r.headers:
            phase.retry_after_missing += 1
    except httpx.HTTPError:
        status = -1  # transport error: counted apart from HTTP statuses
    phase.statuses[status] += 1
    if status == 200:
        phase.latencies_ok.append(time.perf_counter() - t0)
        phase.server_latencies_ok.append(float(r.headers["x-total-time"]) / 1000.0)


async def closed_loop(url: str, batches: list[list[str]], concurrency: int, seconds: float) -> Phase:
    phase = Phase()
    end = time.perf_counter() + seconds
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:

        async def worker(w: int) -> None:
            i = w
            while time.perf_counter() < end:
                await _one(client, batches[i % len(batches)], phase)
                i += concurrency

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(w) for w in range(concurrency)))
        phase.seconds = time.perf_counter() - t0
    return phase


async def open_loop(url: str, batches: list[list[str]], rate: float, seconds: float, max_requests: int,
                    seed: int = 0) -> Phase:
    """Poisson arrivals at ``rate``/s; each request is its own task, whatever the server does."""
    phase = Phase()
    rng = random.Random(seed)
    limits = httpx.Limits(max_connections=512, max_keepalive_connections=512)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        tasks: list[asyncio.Task[None]] = []
        t0 = time.perf_counter()
        next_at = t0
        while next_at - t0 < seconds and len(tasks) < max_requests:
            delay = next_at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(_one(client, batches[len(tasks) % len(batches)], phase)))
            next_at += rng.expovariate(rate)
        await asyncio.gather(*tasks)
        phase.seconds = time.perf_counter() - t0
    return phase


def rss_mb(pid: int) -> float:
    import psutil

    return float(psutil.Process(pid).memory_info().rss) / 2**20


@dataclass
class SoakResult:
    capacity: dict[str, Any]
    burst: dict[str, Any]
    recovery: dict[str, Any]
    offered_rate: float
    rss_mb: dict[str, float]


def run_soak(model: Path, factor: float = 8.0, texts_per_request: int = 16, queue_size: int = 64,
             capacity_seconds: float = 4.0, burst_seconds: float = 8.0, max_requests: int = 4000,
             extra_env: dict[str, str] | None = None) -> SoakResult:
    from mipic.service.settings import Settings

    # a request may not be larger than the queue (Settings refuses that): cap inputs per request at its size
    max_inputs = min(queue_size, Settings().max_inputs_per_request)
    env = {"MIPIC_MAX_QUEUE_SIZE": str(queue_size), "MIPIC_MAX_INPUTS_PER_REQUEST": str(max_inputs),
           "MIPIC_REQUEST_TIMEOUT_MS": "10000", **(extra_env or {})}
    port = free_port()
    proc = start_server(model, port, env)
    url = f"http://127.0.0.1:{port}"
    texts = make_texts(texts_per_request * 32, 24, seed=3)
    batches = [texts[i : i + texts_per_request] for i in range(0, len(texts), texts_per_request)]
    rss: dict[str, float] = {}
    try:
        asyncio.run(closed_loop(url, batches, 4, 1.0))  # warm
        rss["before"] = rss_mb(proc.pid)
        cap = asyncio.run(closed_loop(url, batches, 4, capacity_seconds))
        capacity = float(cap.summary()["ok_per_s"])
        rate = factor * capacity
        peak = [rss["before"]]

        async def burst_with_sampling() -> Phase:
            async def sample() -> None:
                while True:
                    peak.append(rss_mb(proc.pid))
                    await asyncio.sleep(0.25)

            sampler = asyncio.create_task(sample())
            try:
                return await open_loop(url, batches, rate, burst_seconds, max_requests)
            finally:
                sampler.cancel()

        burst = asyncio.run(burst_with_sampling())
        rss["peak"] = max(peak)
        time.sleep(1.0)
        rec = asyncio.run(closed_loop(url, batches, 4, capacity_seconds))
        rss["after"] = rss_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    return SoakResult(cap.summary(), burst.summary(), rec.summary(), rate, rss)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", type=Path, default=Path("models/all-minilm-l6-v2/1"))
    ap.add_argument("--factor", type=float, default=8.0)
    ap.add_argument("--burst-seconds", type=float, default=8.0)
    ap.add_argument("--texts-per-request", type=int, default=16)
    ap.add_argument("--queue-size", type=int, default=64)
    args = ap.parse_args()
    load = os.getloadavg()[0]
    r = run_soak(args.model, args.factor, args.texts_per_request, args.queue_size, burst_seconds=args.burst_seconds)
    env = environment() | {"loadavg_1m_at_start": load}
    b, c, v = r.burst, r.capacity, r.recovery
    rows = [
        [name, f"{p['ok_per_s']:.1f}", p["statuses"], p.get("ok_latency", {}).get("p99_ms", 0.0),
         p.get("ok_server_latency", {}).get("p99_ms", 0.0)]
        for name, p in [("capacity (closed loop, 4 clients)", c),
                        (f"burst: open loop at {r.offered_rate:.1f} req/s ({args.factor:g}x)", b),
                        ("recovery (closed loop)", v)]
    ]
    md = (f"Overload soak, {args.texts_per_request} texts/request, queue {args.queue_size} inputs, "
          f"{env['cpu']} ({env['cores']} cores, load {load:.2f} at start). RSS MB before/peak/after: "
          f"{r.rss_mb['before']:.0f}/{r.rss_mb['peak']:.0f}/{r.rss_mb['after']:.0f}; "
          f"429/503 without Retry-After: {b['retry_after_missing']}.\n\n"
          + md_table(["phase", "ok req/s", "statuses", "ok p99 ms (client)", "ok p99 ms (server)"], rows))
    path = write_results("overload", {"env": env, "args": vars(args) | {"model": str(args.model)},
                                      "result": r.__dict__}, md)
    print(md)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
