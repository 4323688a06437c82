"""Open-loop HTTP load generator: Poisson arrivals at a fixed offered rate, bounded in count and time.

Each request is sent at its scheduled arrival time whatever the server is doing (no coordinated omission:
latency is measured from the scheduled time, so a send delayed by a busy client still counts). Requests
are OpenAI-style embedding calls, so mipic (``/v1/embeddings`` with ``layer``) and peers (Infinity's
``/embeddings``) get the same bodies. aiohttp keeps the generator's own CPU use low: it shares the
machine with the server.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from bench.common import percentiles


@dataclass(frozen=True)
class Target:
    """Where to send and what the body looks like besides the inputs."""

    base_url: str
    path: str
    extra_body: dict[str, Any] = field(default_factory=dict)


@dataclass
class LoadResult:
    offered_rps: float
    texts_per_request: int
    duration_s: float  # first scheduled send → last answer
    sent: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    latencies_s: list[float] = field(default_factory=list)
    late_sends: int = 0  # sends that left > 5 ms after their scheduled time (client saturated)
    served_layers: Counter[str] = field(default_factory=Counter)  # x-exit-layer of 200s (mipic only)
    server_latencies_s: list[float] = field(default_factory=list)  # x-total-time of 200s (mipic only): the handler's
    # own time, without the client's lateness, the kernel and the event loop's queue before the handler
    retry_after_missing: int = 0  # 429/503 answers without a Retry-After header

    @property
    def ok(self) -> int:
        return self.statuses.get(200, 0)

    def summary(self) -> dict[str, Any]:
        ok_texts = self.ok * self.texts_per_request
        return {
            "offered_rps": self.offered_rps, "offered_texts_per_s": self.offered_rps * self.texts_per_request,
            "texts_per_request": self.texts_per_request, "sent": self.sent, "ok": self.ok,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "duration_s": self.duration_s, "achieved_rps": self.ok / self.duration_s if self.duration_s else 0.0,
            "achieved_texts_per_s": ok_texts / self.duration_s if self.duration_s else 0.0,
            "late_sends": self.late_sends, "latency": percentiles(self.latencies_s),
            "server_latency": percentiles(self.server_latencies_s) if self.server_latencies_s else None,
            "served_layers": dict(sorted(self.served_layers.items(), key=lambda kv: int(kv[0]))),
            "retry_after_missing": self.retry_after_missing,
        }

    def _ok_within(self, seconds: float) -> int:
        return sum(1 for s in self.latencies_s if s <= seconds)

    def share_of_ok_within(self, seconds: float) -> float:
        """Share of the 200s (the admitted requests) answered within ``seconds`` of their scheduled time."""
        return self._ok_within(seconds) / len(self.latencies_s) if self.latencies_s else 0.0

    def share_ok_within(self, seconds: float) -> float:
        """Share of the requests sent that got a 200 within ``seconds`` of their scheduled time."""
        return self._ok_within(seconds) / self.sent if self.sent else 0.0


def poisson_schedule(rate_rps: float, duration_s: float, max_requests: int, seed: int = 0) -> list[float]:
    """Arrival offsets (s) of a Poisson process at ``rate_rps`` within ``duration_s``, at most ``max_requests``."""
    if rate_rps <= 0:
        raise ValueError("rate_rps must be positive")
    rng = random.Random(seed)
    out: list[float] = []
    t = rng.expovariate(rate_rps)
    while t < duration_s and len(out) < max_requests:
        out.append(t)
        t += rng.expovariate(rate_rps)
    return out


async def open_loop(target: Target, batches: list[list[str]], rate_rps: float, duration_s: float,
                    max_requests: int = 20_000, timeout_s: float = 60.0, seed: int = 0) -> LoadResult:
    """Send ``batches`` round-robin at Poisson arrivals; wait for every answer (each bounded by ``timeout_s``)."""
    import aiohttp

    schedule = poisson_schedule(rate_rps, duration_s, max_requests, seed)
    result = LoadResult(offered_rps=rate_rps, texts_per_request=len(batches[0]), duration_s=0.0)
    url = target.base_url.rstrip("/") + target.path
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    last_done = 0.0
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one(i: int, scheduled: float) -> None:
            nonlocal last_done
            body = {**target.extra_body, "input": batches[i % len(batches)]}
            try:
                async with session.post(url, json=body) as r:
                    await r.read()
                    status = r.status
                    layer = r.headers.get("x-exit-layer")
                    total = r.headers.get("x-total-time")
                    if status == 200 and total is not None:
                        result.server_latencies_s.append(float(total) / 1000)
                    if status == 200 and layer is not None:
                        result.served_layers[layer] += 1
                    if status in (429, 503) and "retry-after" not in r.headers:
                        result.retry_after_missing += 1
            except (aiohttp.ClientError, asyncio.TimeoutError):
                status = -1  # transport error or client timeout
            now = time.perf_counter()
            result.statuses[status] += 1
            if status == 200:
                result.latencies_s.append(now - scheduled)
            last_done = max(last_done, now)

        tasks: list[asyncio.Task[None]] = []
        t0 = time.perf_counter()
        for i, offset in enumerate(schedule):
            scheduled = t0 + offset
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -0.005:
                result.late_sends += 1
            tasks.append(asyncio.create_task(one(i, scheduled)))
        result.sent = len(tasks)
        await asyncio.gather(*tasks)
        result.duration_s = max(last_done, t0 + duration_s) - t0 if tasks else duration_s
    return result


async def closed_loop(target: Target, batches: list[list[str]], concurrency: int, duration_s: float,
                      timeout_s: float = 60.0) -> LoadResult:
    """``concurrency`` clients, each sending its next request when the last one is answered (warm-up, capacity)."""
    import aiohttp

    result = LoadResult(offered_rps=0.0, texts_per_request=len(batches[0]), duration_s=0.0)
    url = target.base_url.rstrip("/") + target.path
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as session:
        t0 = time.perf_counter()
        end = t0 + duration_s

        async def worker(w: int) -> None:
            i = w
            while time.perf_counter() < end:
                body = {**target.extra_body, "input": batches[i % len(batches)]}
                s = time.perf_counter()
                try:
                    async with session.post(url, json=body) as r:
                        await r.read()
                        status = r.status
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    status = -1
                result.statuses[status] += 1
                result.sent += 1
                if status == 200:
                    result.latencies_s.append(time.perf_counter() - s)
                i += concurrency

        await asyncio.gather(*(worker(w) for w in range(concurrency)))
        result.duration_s = time.perf_counter() - t0
    return result
