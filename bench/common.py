"""Shared benchmark helpers: inputs, percentiles, environment facts, and JSON + Markdown output."""

from __future__ import annotations

import json
import os
import platform
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

RESULTS_DIR = Path(__file__).resolve().parent / "results"

_WORDS = (
    "the model returns an embedding for every sentence and the client chooses how many dimensions and "
    "which layer it can afford search engines rank documents by cosine similarity between query and "
    "passage vectors while classifiers read a compact representation news articles reviews questions "
    "answers products people cities rivers markets prices policies elections matches players weather"
).split()


def make_texts(n: int, tokens: int, seed: int = 0) -> list[str]:
    """``n`` English-like texts of about ``tokens`` word-piece tokens each (deterministic)."""
    rng = random.Random(seed)
    # ~1.1 word-pieces per word for this vocabulary plus [CLS]/[SEP]
    words = max(1, round((tokens - 2) / 1.1))
    return [" ".join(rng.choice(_WORDS) for _ in range(words)) for _ in range(n)]


def percentiles(samples_s: list[float]) -> dict[str, float]:
    a = np.asarray(samples_s) * 1000.0
    return {"p50_ms": float(np.percentile(a, 50)), "p95_ms": float(np.percentile(a, 95)),
            "p99_ms": float(np.percentile(a, 99)), "mean_ms": float(a.mean())}


def environment() -> dict[str, Any]:
    import onnxruntime

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                check=False).stdout.strip()
    except OSError:
        commit = ""
    return {"cpu": cpu, "cores": os.cpu_count(), "python": sys.version.split()[0],
            "onnxruntime": onnxruntime.__version__, "numpy": np.__version__, "commit": commit}


def write_results(name: str, payload: dict[str, Any], markdown: str) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    path = RESULTS_DIR / f"{name}.md"
    path.write_text(markdown)
    return path


def md_table(headers: list[str], rows: list[list[Any]]) -> str:
    def fmt(v: Any) -> str:
        return f"{v:,.1f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"
