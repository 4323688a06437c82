"""Where the live server's CPU goes at saturation: py-spy samples of ``mipic serve`` under closed-loop load.

For each budget: the server runs under ``concurrency`` clients of ``texts_per_request`` ~16-token texts
(OpenAI surface, the load generator in this process) while ``py-spy record`` samples every Python thread of
the server that is on a CPU (``--nonblocking``: the server is never paused). Samples are grouped by thread
(event loop, tokenizer pool, inference worker) and, inside each, by the frame that was running (self time) and
by the server's own functions on the stack (inclusive). onnxruntime's own pool threads are native, not Python:
their CPU is the server's total (``/proc``) minus what py-spy saw, reported as one line.
Usage: ``python -m bench.profile_served [--quick]`` (needs ``py-spy``, in the dev extra).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import (
    DEFAULT_MODEL,
    RESULTS_DIR,
    TMP_DIR,
    env_line,
    environment,
    load_snapshot,
    make_texts,
    md_table,
    write_results,
)

Budget = tuple[int, int]


@dataclass(frozen=True)
class ProfileConfig:
    budgets: tuple[Budget, ...] = ((384, 6), (64, 1))
    tokens: int = 16
    texts_per_request: int = 8
    concurrency: int = 32
    seconds: float = 15.0
    rate_hz: int = 250
    top: int = 12


def thread_group(name: str) -> str:
    """py-spy's thread label → what that thread does in the server."""
    if "mipic-tok" in name:
        return "tokenizer pool"
    if "mipic-infer" in name:
        return "inference worker"
    if "MainThread" in name:
        return "event loop (HTTP, JSON, batcher, metrics)"
    return "other Python threads"


def task_cpu_seconds(pid: int) -> dict[int, float]:
    """utime + stime of every thread of a process, by thread id (``/proc/PID/task/TID/stat``)."""
    from bench.served import stat_cpu_seconds

    out: dict[int, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out[int(task.name)] = stat_cpu_seconds(task / "stat")
        except OSError:  # the thread ended
            continue
    return out


def thread_ids(raw: str) -> dict[int, str]:
    """py-spy's thread labels, ``thread (TID): name``, by thread id."""
    out: dict[int, str] = {}
    for line in raw.splitlines():
        head = line.split(";", 1)[0]
        if head.startswith("thread (") and ")" in head:
            tid = head[len("thread ("): head.index(")")]
            if tid.isdigit():
                out[int(tid)] = head
    return out


def summarize(raw: str, top: int) -> dict[str, Any]:
    """py-spy ``--format raw`` (collapsed stacks: ``thread;frame;frame… count``) → shares per thread group,
    top self frames per group, and the server's own functions by inclusive share."""
    groups: collections.Counter[str] = collections.Counter()
    self_by_group: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        group = thread_group(frames[0])
        total += n
        groups[group] += n
        self_by_group[group][frames[-1]] += n
        for f in {f for f in frames[1:] if "mipic/" in f}:
            inclusive[f] += n
    share = (lambda n: n / total) if total else (lambda n: 0.0)
    return {
        "samples": total,
        "groups": {g: share(n) for g, n in groups.most_common()},
        "self": {g: [[f, share(n)] for f, n in c.most_common(top)] for g, c in self_by_group.items()},
        "mipic_inclusive": [[f, share(n)] for f, n in inclusive.most_common(2 * top)],
    }


def profile_budget(url: str, pid: int, dim: int, layer: int, cfg: ProfileConfig, out_raw: Path) -> dict[str, Any]:
    from bench.loadgen import Target, closed_loop
    from bench.served import process_cpu_seconds

    texts = make_texts(cfg.texts_per_request * 64, cfg.tokens, seed=7)
    batches = [texts[i: i + cfg.texts_per_request] for i in range(0, len(texts), cfg.texts_per_request)]
    target = Target(url, "/v1/embeddings", {"dimensions": dim, "layer": layer})
    asyncio.run(closed_loop(target, batches, cfg.concurrency, 2.0))  # warm
    spy_bin = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    spy = subprocess.Popen([spy_bin, "record", "-p", str(pid), "-d", str(int(cfg.seconds) + 1), "-r", str(cfg.rate_hz),
                            "-f", "raw", "-o", str(out_raw), "--nonblocking", "--threads"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    cpu0, tasks0, own0, t0 = process_cpu_seconds(pid), task_cpu_seconds(pid), time.process_time(), time.perf_counter()
    r = asyncio.run(closed_loop(target, batches, cfg.concurrency, cfg.seconds))
    wall = time.perf_counter() - t0
    server_cpu, tasks1 = process_cpu_seconds(pid) - cpu0, task_cpu_seconds(pid)
    loadgen_cpu = time.process_time() - own0
    spy.wait(timeout=cfg.seconds + 60)
    raw = out_raw.read_text() if out_raw.is_file() else ""
    names = thread_ids(raw)
    by_group: dict[str, float] = collections.defaultdict(float)  # measured CPU (cores) of each thread group
    for tid, after in tasks1.items():
        group = thread_group(names[tid]) if tid in names else "native threads (onnxruntime's pool)"
        by_group[group] += (after - tasks0.get(tid, 0.0)) / wall
    served = max(1, r.ok * r.texts_per_request)
    ranked = sorted(by_group.items(), key=lambda kv: -kv[1])
    return {"dim": dim, "layer": layer, "texts_per_s": r.ok * r.texts_per_request / r.duration_s,
            "statuses": dict(r.statuses), "server_cpu_cores": server_cpu / wall,
            "loadgen_cpu_cores": loadgen_cpu / wall, "server_cpu_ms_per_text": 1000 * server_cpu / served,
            "thread_cpu_cores": dict(ranked),
            "thread_cpu_ms_per_text": {g: 1000 * c * wall / served for g, c in ranked},
            **summarize(raw, cfg.top)}


def run(model_dir: Path, cfg: ProfileConfig, results_dir: Path | None = None) -> dict[str, Any]:
    from bench.servers import mipic_server

    load = load_snapshot()
    env = environment()
    TMP_DIR.mkdir(parents=True, exist_ok=True)
    results = []
    with mipic_server(model_dir) as (url, pid):
        for dim, layer in cfg.budgets:
            print(f"profile: d{dim}/l{layer} under {cfg.concurrency} clients for {cfg.seconds} s", flush=True)
            results.append(profile_budget(url, pid, dim, layer, cfg, TMP_DIR / f"profile_d{dim}_l{layer}.raw"))
    payload = {"env": env, "load_at_start": load, "model_dir": str(model_dir), "config": cfg.__dict__,
               "results": results, "cores": os.cpu_count()}
    write_results("profile_served", payload, markdown(payload), results_dir or RESULTS_DIR)
    return payload


def markdown(payload: dict[str, Any]) -> str:
    cfg = payload["config"]
    lines = [f"Live server at saturation, sampled by py-spy ({cfg['rate_hz']} Hz, on-CPU Python threads only), "
             f"{cfg['concurrency']} clients × {cfg['texts_per_request']} ~{cfg['tokens']}-token texts, "
             f"{cfg['seconds']} s per budget, load generator in the same machine. {env_line(payload['env'])}. "
             f"Load average at start: {payload['load_at_start']['loadavg'][0]}.", ""]
    groups = ["event loop (HTTP, JSON, batcher, metrics)", "tokenizer pool", "inference worker",
              "native threads (onnxruntime's pool)", "other Python threads"]
    rows = []
    for r in payload["results"]:
        per = r["thread_cpu_ms_per_text"]
        rows.append([f"d{r['dim']}/l{r['layer']}", round(r["texts_per_s"]), f"{r['server_cpu_cores']:.2f}",
                     f"{r['server_cpu_ms_per_text']:.3f}", *[f"{per.get(g, 0.0):.3f}" for g in groups],
                     f"{r['loadgen_cpu_cores']:.2f}"])
    lines += ["CPU per text served, by thread (ms of CPU per text, from /proc per thread; the inference worker "
              "is the Python thread that calls onnxruntime, and computes on it):", "",
              md_table(["budget", "texts/s", "server CPU (cores)", "server CPU ms/text", *groups,
                        "load generator (cores)"], rows), ""]
    for r in payload["results"]:
        lines += [f"### d{r['dim']}/l{r['layer']}: top frames by self time (share of the on-CPU Python samples)", ""]
        for group, frames in r["self"].items():
            lines += [f"- **{group}**: " + "; ".join(f"`{f}` {100 * s:.1f} %" for f, s in frames[:6])]
        lines += ["", "mipic's own functions, inclusive: " + "; ".join(
            f"`{f}` {100 * s:.1f} %" for f, s in r["mipic_inclusive"][:10]), ""]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    cfg = ProfileConfig(seconds=2.0, budgets=((64, 1),)) if args.quick else ProfileConfig()
    print(markdown(run(args.model, cfg)))


if __name__ == "__main__":
    main()
