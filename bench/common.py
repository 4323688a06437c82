"""Shared benchmark helpers: inputs, statistics, FLOP formulas, environment facts, JSON + Markdown output."""

from __future__ import annotations

import json
import os
import platform
import random
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

RESULTS_DIR = Path(__file__).resolve().parent / "results"
# Built artefacts (int8 copy, Optimum exports for the peers): git-ignored, rebuilt on demand.
TMP_DIR = RESULTS_DIR / "tmp"
DEFAULT_MODEL = Path("models/all-minilm-l6-v2/1")
# The peers' python: this variable if set, else the venv bench.prepare builds (bench.prepare.peers_python).
PEERS_PYTHON: Path | None = Path(os.environ["MIPIC_BENCH_PEERS_PYTHON"]) if os.environ.get(
    "MIPIC_BENCH_PEERS_PYTHON") else None

# A CPU-heavy process with one of these in its command line makes timings meaningless.
BUSY_PATTERNS = ("mipic train", "mipic retrain", "mipic eval", "mipic heads", "pretrain")

_WORDS = (
    "the model returns a vector for every sentence and the client chooses how many dimensions and "
    "which layer it can afford search engines rank documents by dot similarity between query and "
    "passage vectors while readers see a compact representation news articles reviews questions "
    "answers products people cities rivers markets prices policies elections matches players weather"
).split()


def make_texts(n: int, tokens: int, seed: int = 0) -> list[str]:
    """``n`` English-like texts of about ``tokens`` word-piece tokens each, [CLS]/[SEP] included (deterministic)."""
    rng = random.Random(seed)
    # every word of this vocabulary is one word-piece in the BERT uncased vocabulary
    words = max(1, tokens - 2)
    return [" ".join(rng.choice(_WORDS) for _ in range(words)) for _ in range(n)]


def request_batches(texts_per_request: int, tokens: int, n_batches: int = 64) -> list[list[str]]:
    """``n_batches`` request bodies' texts: ``texts_per_request`` texts of ~``tokens`` tokens each (seed 7)."""
    texts = make_texts(texts_per_request * n_batches, tokens, seed=7)
    return [texts[i: i + texts_per_request] for i in range(0, len(texts), texts_per_request)]


def percentiles(samples_s: Sequence[float]) -> dict[str, float]:
    """p50/p95/p99/mean/max in milliseconds of samples given in seconds (zeros when there are none)."""
    if len(samples_s) == 0:
        return {"p50_ms": 0.0, "p95_ms": 0.0, "p99_ms": 0.0, "mean_ms": 0.0, "max_ms": 0.0}
    a = np.asarray(samples_s, dtype=np.float64) * 1000.0
    p50, p95, p99 = np.percentile(a, [50, 95, 99])
    return {"p50_ms": float(p50), "p95_ms": float(p95), "p99_ms": float(p99), "mean_ms": float(a.mean()),
            "max_ms": float(a.max())}


# --------------------------------------------------------------------------- FLOPs


@dataclass(frozen=True)
class EncoderShape:
    """What a BERT-style encoder layer costs depends on these two widths only."""

    hidden: int  # H
    intermediate: int  # I (feed-forward width, 4H for BERT/MiniLM)


def layer_flops(shape: EncoderShape, seq_len: int) -> float:
    """FLOPs of one encoder layer on one sequence of ``seq_len`` tokens (multiply-add = 2 FLOPs).

    Linear parts: Q, K, V, O projections (4·H²) and the feed-forward pair (2·H·I) per token, times 2·T.
    Attention: scores Q·Kᵀ and the weighted sum A·V, each T²·H multiply-adds: 2·2·T²·H.
    Biases, softmax, layer norms and GELU are O(T·H) and left out.
    """
    h, i, t = shape.hidden, shape.intermediate, seq_len
    return 2.0 * (4 * h * h + 2 * h * i) * t + 2.0 * 2.0 * t * t * h


def encoder_flops(shape: EncoderShape, seq_lens: Sequence[int], layers: int) -> float:
    """FLOPs of running ``layers`` encoder layers on sequences of the given lengths (no padding)."""
    return float(layers * sum(layer_flops(shape, t) for t in seq_lens))


def read_encoder_shape(model_dir: Path, hidden: int) -> EncoderShape:
    """The feed-forward width from the first layer's ONNX weights (the manifest stores only H)."""
    import onnx

    path = model_dir / "layer_01.onnx"
    widths: set[int] = set()
    if path.is_file():
        graph = onnx.load(str(path), load_external_data=False).graph
        for init in graph.initializer:
            if len(init.dims) == 2 and hidden in init.dims:
                widths.update(int(d) for d in init.dims if d != hidden)
    return EncoderShape(hidden=hidden, intermediate=max(widths) if widths else 4 * hidden)


# --------------------------------------------------------------------------- Pareto front


def pareto_front(costs: Sequence[float], scores: Sequence[float]) -> list[int]:
    """Indices of the points no other point beats (cost no higher and score no lower, one strictly),
    sorted by cost. Ties in both keep the first point only."""
    if len(costs) != len(scores):
        raise ValueError("costs and scores must have the same length")
    order = sorted(range(len(costs)), key=lambda i: (costs[i], -scores[i]))
    front: list[int] = []
    best = -np.inf
    for i in order:
        if scores[i] > best:
            front.append(i)
            best = scores[i]
    return front


# --------------------------------------------------------------------------- timing


def time_calls(fn: Callable[[], object], min_seconds: float, min_iters: int = 2, max_iters: int = 10_000,
               warmup: int = 0) -> list[float]:
    """Durations (s) of ``fn()`` calls: at least ``min_iters`` and until ``min_seconds`` have passed."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    t_end = time.perf_counter() + min_seconds
    while len(times) < max_iters and (len(times) < min_iters or time.perf_counter() < t_end):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


# --------------------------------------------------------------------------- environment


def busy_processes() -> list[str]:
    """Command lines of running processes that would spoil timings (training, pretraining)."""
    me = os.getpid()
    found: list[str] = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == me:
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        if any(p in cmd for p in BUSY_PATTERNS):
            found.append(f"{pid} {cmd[:160]}")
    return found


def _cpu_ticks() -> dict[int, tuple[int, str]]:
    out: dict[int, tuple[int, str]] = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1: stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        out[int(pid)] = (int(fields[11]) + int(fields[12]), name)  # utime + stime
    return out


def top_cpu(interval_s: float = 0.5, n: int = 3) -> list[str]:
    """The ``n`` processes that used the most CPU over ``interval_s`` (other than this one), as 'pid name %'."""
    hz = os.sysconf("SC_CLK_TCK")
    a = _cpu_ticks()
    time.sleep(interval_s)
    b = _cpu_ticks()
    me = os.getpid()
    use = [(100.0 * (b[p][0] - a[p][0]) / hz / interval_s, p, b[p][1]) for p in b if p in a and p != me]
    return [f"{p} {name} {pct:.0f}%" for pct, p, name in sorted(use, reverse=True)[:n] if pct >= 5]


def load_snapshot() -> dict[str, Any]:
    """Load average and competing processes, recorded at the start of every measured section."""
    one, five, fifteen = os.getloadavg()
    return {"loadavg": [round(one, 2), round(five, 2), round(fifteen, 2)], "busy_processes": busy_processes(),
            "top_cpu": top_cpu(), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def environment() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    flags: list[str] = []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                have = set(line.split(":", 1)[1].split())
                flags = [f for f in ("avx2", "fma", "f16c", "avx512f", "avx512_vnni", "avx512_bf16", "avx512fp16",
                                     "avx_vnni", "amx_tile") if f in have]
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                check=False).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                                    text=True, check=False).stdout.strip())
    except OSError:
        commit, dirty = "", False
    versions = {d: _version(d) for d in ("mipic", "onnxruntime", "numpy", "tokenizers", "fastapi", "uvicorn",
                                         "torch", "transformers", "sentence-transformers", "optimum", "aiohttp")}
    return {"cpu": cpu, "cpu_flags": flags, "cores": os.cpu_count(), "python": sys.version.split()[0],
            "platform": platform.platform(), "versions": versions,
            "commit": commit + ("+dirty" if dirty else "")}


def env_line(env: dict[str, Any]) -> str:
    """One Markdown line naming the machine and the versions, for the top of every table."""
    v = env["versions"]
    return (f"{env['cpu']} ({env['cores']} cores, {'+'.join(env['cpu_flags']) or 'no AVX2'}), Python {env['python']}, "
            f"onnxruntime {v['onnxruntime']}, numpy {v['numpy']}, commit {env['commit'] or '?'}")


# --------------------------------------------------------------------------- output


def write_results(name: str, payload: dict[str, Any], markdown: str, results_dir: Path | None = None) -> Path:
    """``<name>.json`` (everything measured) and ``<name>.md`` (the table the README quotes)."""
    out = results_dir or RESULTS_DIR
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
    path = out / f"{name}.md"
    path.write_text(markdown)
    return path


def fmt_cell(v: Any) -> str:
    """Floats: thousands separators and a precision that suits their size; the rest as ``str``."""
    if isinstance(v, bool) or v is None:
        return "" if v is None else str(v)
    if isinstance(v, float):
        if not np.isfinite(v):
            return "n/a"
        a = abs(v)
        if a >= 100:
            return f"{v:,.0f}"
        if a >= 10:
            return f"{v:.1f}"
        if a >= 1:
            return f"{v:.2f}"
        return f"{v:.3f}"
    return str(v)


def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub Markdown table; text columns left-aligned, numeric columns right-aligned."""
    rows = [list(r) + [""] * (len(headers) - len(r)) for r in rows]
    numeric = [bool(rows) and all(isinstance(r[c], (int, float)) and not isinstance(r[c], bool) for r in rows)
               for c in range(len(headers))]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---:" if n else "---" for n in numeric) + "|"]
    lines += ["| " + " | ".join(fmt_cell(v).replace("|", "\\|") for v in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"
