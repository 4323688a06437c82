"""Memory of ``mipic serve`` under the largest request the default limits admit: RSS before, at peak, after.

For each onnxruntime arena choice (``MIPIC_ONNX_ARENA``: ``shared``, ``off``, ``per-session``) a fresh server
(default settings otherwise, but a queue and a request deadline that hold the whole load) is warmed and its
idle RSS read ("before"); then ``clients`` clients each send ``rounds`` requests of ``max_inputs_per_request``
texts of ``max_seq_length`` tokens at once (one such request keeps the server saturated for minutes). The other
arenas, for comparison, get ``comparison_texts`` texts per request: each reaches its peak within a few batches.
The peak is the kernel's high-water mark (``VmHWM``, reset just before the load through
``/proc/PID/clear_refs``), so no sampling interval can miss it; "after" is the RSS ``settle_s`` after the last
answer. Offline, the same arenas are timed on the engine (one child process each: the shared arena is
process-wide).
Targets (issue 13): peak ≤ 1.2 GB, after within 300 MB of before.
Usage: ``python -m bench.memory [--quick] [--arenas shared,off]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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

PEAK_LIMIT_MB = 1200.0
SETTLE_LIMIT_MB = 300.0
ARENAS = ("shared", "off", "per-session")


@dataclass(frozen=True)
class MemoryConfig:
    arenas: tuple[str, ...] = ARENAS
    clients: int = 1
    rounds: int = 1
    comparison_texts: int | None = 256  # texts per request for the arenas other than the default (None: all)
    dim: int | None = None  # None: the model's full width
    layer: int | None = None  # None: the full depth
    settle_s: float = 3.0
    timeout_s: float = 600.0  # per request
    offline_points: tuple[tuple[int, int], ...] = ((16, 128), (256, 32), (256, 64))  # (tokens, batch)
    offline_seconds: float = 1.0


class ProcessMemory:
    """RSS and its high-water mark of one process, in MB, from ``/proc`` (Linux)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def _status(self, key: str) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return float(line.split()[1]) / 1024.0  # kB → MB
        raise RuntimeError(f"no {key} in /proc/{self.pid}/status")

    def rss_mb(self) -> float:
        return self._status("VmRSS")

    def peak_mb(self) -> float:
        return self._status("VmHWM")

    def reset_peak(self) -> None:
        """Start a new high-water mark at the current RSS (``echo 5 > clear_refs``)."""
        Path(f"/proc/{self.pid}/clear_refs").write_text("5")


def largest_request(model_dir: Path) -> tuple[list[str], int]:
    """(texts, tokens per text): ``max_inputs_per_request`` texts at the token limit, within the body limit."""
    from mipic.modeldir.manifest import load_manifest
    from mipic.service.settings import Settings

    settings = Settings()
    manifest = load_manifest(model_dir, verify=False)
    tokens = min(settings.max_seq_length or manifest.max_seq_length, manifest.max_seq_length)
    n = settings.max_inputs_per_request
    words = tokens  # a few more words than tokens: every text is cut at the limit
    while True:
        texts = make_texts(n, words + 2, seed=11)
        if len(json.dumps({"input": texts}).encode()) <= settings.max_request_bytes - 256 or words < 8:
            return texts, tokens
        words = int(words * 0.9)


async def _saturate(url: str, body: dict[str, Any], clients: int, rounds: int, timeout_s: float) -> dict[str, Any]:
    import httpx

    statuses: dict[str, int] = {}
    t0 = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, timeout=timeout_s) as client:

        async def one_client() -> None:
            for _ in range(rounds):
                try:
                    r = await client.post("/v1/embeddings", json=body)
                    key = str(r.status_code)
                except httpx.HTTPError as exc:
                    key = type(exc).__name__
                statuses[key] = statuses.get(key, 0) + 1

        await asyncio.gather(*(one_client() for _ in range(clients)))
    return {"statuses": statuses, "seconds": time.perf_counter() - t0}


def served_memory(model_dir: Path, arena: str, cfg: MemoryConfig, max_texts: int | None = None) -> dict[str, Any]:
    """Start ``mipic serve`` with ``arena``, saturate it with the largest request (or its first ``max_texts``
    texts), return the RSS figures."""
    from bench.servers import free_port, start_server, stop

    texts, tokens = largest_request(model_dir)
    # the queue holds every client's full request even when fewer texts are sent (Settings refuses a queue
    # smaller than max_inputs_per_request, which is what largest_request returns before the cut)
    queue_size = max(1024, cfg.clients * len(texts))
    texts = texts[:max_texts] if max_texts else texts
    body: dict[str, Any] = {"input": texts}
    if cfg.dim is not None:
        body["dimensions"] = cfg.dim
    if cfg.layer is not None:
        body["layer"] = cfg.layer
    port = free_port()
    proc = start_server(model_dir, port, {"MIPIC_ONNX_ARENA": arena, "MIPIC_MAX_QUEUE_SIZE": str(queue_size),
                                          "MIPIC_REQUEST_TIMEOUT_MS": str(int(cfg.timeout_s * 1000))})
    url = f"http://127.0.0.1:{port}"
    mem = ProcessMemory(proc.pid)
    samples: list[tuple[float, float]] = []
    try:
        asyncio.run(_saturate(url, {"input": texts[:8]}, 1, 1, cfg.timeout_s))  # warm the HTTP path
        time.sleep(1.0)
        before = mem.rss_mb()
        mem.reset_peak()
        done = threading.Event()
        t0 = time.perf_counter()

        def sample() -> None:  # the RSS curve for the report; the peak comes from VmHWM
            while not done.is_set():
                samples.append((time.perf_counter() - t0, mem.rss_mb()))
                done.wait(0.1)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        load = asyncio.run(_saturate(url, body, cfg.clients, cfg.rounds, cfg.timeout_s))
        peak = mem.peak_mb()
        time.sleep(cfg.settle_s)
        after = mem.rss_mb()
        done.set()
        sampler.join(timeout=5)
    finally:
        stop(proc)
    n_texts = cfg.clients * cfg.rounds * len(texts)
    return {"arena": arena, "texts_per_request": len(texts), "tokens_per_text": tokens, "clients": cfg.clients,
            "rounds": cfg.rounds, "before_mb": before, "peak_mb": peak, "after_mb": after,
            "peak_ok": peak <= PEAK_LIMIT_MB, "settle_ok": after - before <= SETTLE_LIMIT_MB,
            "texts_per_s": n_texts / load["seconds"], **load,
            "samples": [(round(t, 2), round(r, 1)) for t, r in samples]}


# --------------------------------------------------------------------------- offline, one child per arena


def offline_worker(spec: dict[str, Any]) -> dict[str, Any]:
    from mipic.modeldir.runner import LoadedModel, Row

    model = LoadedModel(Path(spec["model"]), provider="cpu", verify_checksums=False, arena=spec["arena"])
    mem = ProcessMemory(os.getpid())
    points = []
    for tokens, batch in spec["points"]:
        ids = [e.ids for e in model.tokenizer.encode(make_texts(batch, tokens, seed=tokens))]
        rows = [Row(ids=i, dim=model.manifest.hidden_size, layer=model.manifest.num_layers) for i in ids]
        times = time_calls(lambda rows=rows: model.run(rows), spec["seconds"], 2, warmup=1)
        points.append({"tokens": tokens, "batch": batch, "texts_per_s": batch / (sum(times) / len(times)),
                       "rss_mb": mem.rss_mb(), "peak_mb": mem.peak_mb()})
    return {"arena": spec["arena"], "points": points}


def offline_memory(model_dir: Path, arena: str, cfg: MemoryConfig) -> dict[str, Any]:
    spec = {"model": str(model_dir), "arena": arena, "points": [list(p) for p in cfg.offline_points],
            "seconds": cfg.offline_seconds}
    proc = subprocess.run([sys.executable, "-m", "bench.memory", "--worker", json.dumps(spec)],
                          capture_output=True, text=True, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"arena": arena, "error": (proc.stderr.strip().splitlines() or ["(no output)"])[-1]}
    return dict(json.loads(lines[-1]))


# --------------------------------------------------------------------------- report


def markdown(payload: dict[str, Any]) -> str:
    env, cfg = payload["env"], payload["config"]
    served = payload["served"]
    first = served[0] if served else {}
    rows = [[s["arena"], s["texts_per_request"], s["before_mb"], s["peak_mb"], s["after_mb"],
             s["after_mb"] - s["before_mb"],
             f"{'yes' if s['peak_ok'] else 'no'} / {'yes' if s['settle_ok'] else 'no'}", s["texts_per_s"],
             ", ".join(f"{k}: {v}" for k, v in s["statuses"].items())] for s in served]
    budget = "the full budget" if cfg["layer"] is None else f"layer {cfg['layer']}"
    parts = [f"`mipic serve` (default settings but `MIPIC_ONNX_ARENA`, and a queue and deadline that hold the load), "
             f"{cfg['clients']} client(s) × {cfg['rounds']} "
             f"request(s) of {first.get('texts_per_request', '?')} texts × {first.get('tokens_per_text', '?')} tokens "
             f"(the largest request the default limits admit; the comparison arenas get the first "
             f"{cfg.get('comparison_texts')} texts) at {budget}, all sent at once. Peak = VmHWM reset "
             f"before the load; after = RSS {cfg['settle_s']:g} s after the last answer. {env_line(env)}. "
             f"Load average at start: {payload['load_at_start']['loadavg'][0]:.2f}.\n\n"
             + md_table(["arena", "texts", "before MB", "peak MB", "after MB", "after − before MB",
                         f"peak ≤ {PEAK_LIMIT_MB:.0f} / settles ≤ {SETTLE_LIMIT_MB:.0f}", "texts/s", "statuses"], rows)]
    offline = [o for o in payload["offline"] if "points" in o]
    if offline:
        keys = [(p["tokens"], p["batch"]) for p in offline[0]["points"]]
        orows = []
        for o in offline:
            at = {(p["tokens"], p["batch"]): p for p in o["points"]}
            orows.append([o["arena"], *(at[k]["texts_per_s"] for k in keys), max(p["peak_mb"] for p in o["points"])])
        parts.append("\nOffline engine at the full budget (`LoadedModel.run`, one process per arena), texts/s and the "
                     "process's peak RSS:\n\n" + md_table(
                         ["arena", *(f"~{t} tok, B={b}" for t, b in keys), "peak MB"], orows))
    for o in payload["offline"]:
        if "error" in o:
            parts.append(f"\n- offline `{o['arena']}` failed: `{o['error']}`")
    return "".join(parts) + "\n"


def run(model_dir: Path, cfg: MemoryConfig, results_dir: Path | None = None) -> dict[str, Any]:
    load = load_snapshot()
    served, offline = [], []
    for arena in cfg.arenas:
        print(f"memory: served, arena={arena}", flush=True)
        s = served_memory(model_dir, arena, cfg, None if arena == "shared" else cfg.comparison_texts)
        print(f"  before {s['before_mb']:.0f} MB, peak {s['peak_mb']:.0f} MB, after {s['after_mb']:.0f} MB, "
              f"{s['texts_per_s']:.1f} texts/s {s['statuses']}", flush=True)
        served.append(s)
    for arena in cfg.arenas:
        print(f"memory: offline, arena={arena}", flush=True)
        offline.append(offline_memory(model_dir, arena, cfg))
    payload = {"env": environment(), "load_at_start": load, "model_dir": str(model_dir),
               "config": cfg.__dict__, "served": served, "offline": offline,
               "limits_mb": {"peak": PEAK_LIMIT_MB, "settle": SETTLE_LIMIT_MB}}
    write_results("memory", payload, markdown(payload), results_dir or RESULTS_DIR)
    return payload


def quick_config() -> MemoryConfig:
    return MemoryConfig(arenas=("shared",), layer=1, offline_points=((16, 32),), offline_seconds=0.2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--arenas", default=None, help=f"comma-separated subset of {','.join(ARENAS)}")
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(offline_worker(json.loads(args.worker))))
        return
    cfg = quick_config() if args.quick else MemoryConfig()
    if args.arenas:
        cfg = MemoryConfig(**{**cfg.__dict__, "arenas": tuple(a.strip() for a in args.arenas.split(","))})
    print(markdown(run(args.model, cfg)))


if __name__ == "__main__":
    main()
