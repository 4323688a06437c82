"""Served benchmark: latency and throughput through HTTP under concurrency, per (dim, layer) budget.

Starts ``mipic serve`` on a loopback port in a child process, drives it with a closed-loop asyncio
load generator (``--concurrency`` clients, each sending one request after another), then stops it.
Usage: ``python -m bench.http_load [--model DIR] [--seconds S] [--concurrency 1,8,32]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from bench.common import environment, make_texts, md_table, percentiles, write_results

BUDGETS = [(384, 6), (64, 6), (384, 3), (64, 3), (64, 1)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(model: Path, port: int, extra_env: dict[str, str]) -> subprocess.Popen[bytes]:
    env = {**os.environ, "MIPIC_BOOTSTRAP_DEFAULT": "false", "MIPIC_MAX_QUEUE_SIZE": "100000", **extra_env}
    proc = subprocess.Popen(
        [sys.executable, "-m", "mipic.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
         "--model", str(model), "--log-level", "warning"],
        env=env,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise RuntimeError("server exited during start")
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server not ready in 120 s")


async def run_load(url: str, texts: list[str], dim: int, layer: int, concurrency: int, seconds: float,
                   per_request: int) -> dict[str, float]:
    latencies: list[float] = []
    errors = 0
    t_end = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:

        async def worker(w: int) -> None:
            nonlocal errors
            i = w
            while time.perf_counter() < t_end:
                batch = [texts[(i + k) % len(texts)] for k in range(per_request)]
                i += concurrency
                t0 = time.perf_counter()
                r = await client.post(f"/embed?dim={dim}&layer={layer}", json={"inputs": batch})
                if r.status_code == 200:
                    latencies.append(time.perf_counter() - t0)
                else:
                    errors += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(w) for w in range(concurrency)))
        elapsed = time.perf_counter() - t0
    return {"requests": len(latencies), "errors": errors, "req_per_s": len(latencies) / elapsed,
            "texts_per_s": len(latencies) * per_request / elapsed, **percentiles(latencies or [0.0])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", type=Path, default=Path("models/all-minilm-l6-v2/1"))
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--per-request", type=int, default=1, help="texts per request")
    args = ap.parse_args()
    port = free_port()
    proc = start_server(args.model, port, {})
    url = f"http://127.0.0.1:{port}"
    texts = make_texts(512, args.tokens, seed=1)
    results = []
    try:
        for dim, layer in BUDGETS:
            for c in (int(x) for x in args.concurrency.split(",")):
                asyncio.run(run_load(url, texts, dim, layer, c, 0.5, args.per_request))  # warm
                r = asyncio.run(run_load(url, texts, dim, layer, c, args.seconds, args.per_request))
                results.append({"dim": dim, "layer": layer, "concurrency": c, **r})
                print(f"dim={dim} layer={layer} c={c}: {r['texts_per_s']:.1f} texts/s "
                      f"p50 {r['p50_ms']:.1f} ms p99 {r['p99_ms']:.1f} ms errors {r['errors']}", flush=True)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    env = environment()
    md = (f"HTTP `/embed`, closed loop, {args.per_request} text(s) of ~{args.tokens} tokens per request, "
          f"{args.seconds:.0f} s per point, {env['cpu']} ({env['cores']} cores; server and load generator "
          f"share them).\n\n"
          + md_table(["dim", "layer", "concurrency", "texts/s", "p50 ms", "p95 ms", "p99 ms", "errors"],
                     [[r["dim"], r["layer"], r["concurrency"], r["texts_per_s"], r["p50_ms"], r["p95_ms"],
                       r["p99_ms"], r["errors"]] for r in results]))
    path = write_results("http_load", {"env": env, "args": vars(args) | {"model": str(args.model)},
                                       "results": results}, md)
    print(md)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
