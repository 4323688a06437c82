"""The shared arena's cost, and what keeping it buys back: offline engine speed (back-to-back calls of one
batch each, as an in-process caller makes them) of ``arena=shared`` handing memory back after every call
(``keep 0``), ``arena=shared`` with the default keep threshold (``MIPIC_ONNX_ARENA_KEEP_TOKENS``) handing a
large batch's growth back at the end of each call (``MIPIC_ONNX_ARENA_IDLE_RELEASE_S=0``, the behaviour
before), the default (that growth handed back only once the engine has been idle a second) and
``arena=per-session`` (onnxruntime's default: fastest, unbounded memory). Each variant runs in its own
process (the shared arena is process-wide),
the variants interleaved in rotated order over ``reps`` repetitions; ratios are to per-session, per rep,
median (min–max). Usage: ``python -m bench.arena_keep [--reps N]``.
"""

from __future__ import annotations

import argparse
import functools
import json
import resource
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

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
from bench.ratios import Spread, paired_ratios, rotated

POINTS: tuple[tuple[int, int, int, int], ...] = (  # (~tokens, batch, dim, layer)
    (16, 128, 64, 1), (16, 32, 64, 1), (16, 128, 384, 6), (16, 8, 384, 6), (256, 8, 384, 6), (256, 32, 384, 6))
VARIANTS: dict[str, dict[str, Any]] = {
    "shared, keep 0": {"arena": "shared", "arena_keep_tokens": 0, "arena_idle_release_s": 0.0},
    "shared, keep default, back per call": {"arena": "shared", "arena_idle_release_s": 0.0},
    "shared, default (back when idle)": {"arena": "shared"},
    "per-session": {"arena": "per-session"},
}
REFERENCE = "per-session"


def worker(model_dir: str, variant: str, rep: int, seconds: float) -> dict[str, float]:
    from mipic.modeldir.runner import LoadedModel, Row, pin_single_thread_blas

    pin_single_thread_blas()  # as the server does at start: no BLAS thread limit around every exit head
    model = LoadedModel(Path(model_dir), provider="cpu", verify_checksums=False, **VARIANTS[variant])
    out: dict[str, float] = {}
    for tokens, batch, dim, layer in POINTS:
        texts = make_texts(batch, tokens, seed=rep)
        rows = [Row(ids=np.asarray(e.ids), dim=dim, layer=layer) for e in model.tokenizer.encode(texts)]
        faults: list[int] = []
        times = time_calls(functools.partial(_counted, model.run, rows, faults), seconds, 3, warmup=1)
        out[key((tokens, batch, dim, layer))] = batch / float(statistics.median(times))
        out[FAULTS + key((tokens, batch, dim, layer))] = float(statistics.median(faults[1:]))  # warm-up left out
    return out


FAULTS = "minor faults per call: "


def _counted(run: Any, rows: list[Any], faults: list[int]) -> None:
    """``run(rows)``, appending the minor page faults it took (memory the process had to map again)."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    run(rows)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)


def key(point: tuple[int, int, int, int]) -> str:
    tokens, batch, dim, layer = point
    return f"~{tokens} tok, B={batch}, d{dim}/l{layer}"


def run(model_dir: Path, reps: int, seconds: float, results_dir: Path | None = None) -> dict[str, Any]:
    load = load_snapshot()
    values: dict[str, list[dict[str, float]]] = {v: [] for v in VARIANTS}
    for rep in range(reps):
        for variant in rotated(list(VARIANTS), rep):
            spec = json.dumps({"model_dir": str(model_dir), "variant": variant, "rep": rep, "seconds": seconds})
            proc = subprocess.run([sys.executable, "-m", "bench.arena_keep", "--worker", spec],
                                  capture_output=True, text=True, check=True)
            values[variant].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    ratios = {v: {key(p): paired_ratios([r[key(p)] for r in values[v]], [r[key(p)] for r in values[REFERENCE]])
                  .as_dict() for p in POINTS} for v in VARIANTS}
    from mipic.modeldir.runner import DEFAULT_ARENA_IDLE_RELEASE_S, DEFAULT_ARENA_KEEP_TOKENS

    payload = {"env": environment(), "load_at_start": load, "reps": reps, "seconds": seconds,
               "keep_tokens": DEFAULT_ARENA_KEEP_TOKENS, "idle_release_s": DEFAULT_ARENA_IDLE_RELEASE_S,
               "values": values, "ratios": ratios}
    write_results("arena_keep", payload, markdown(payload), results_dir or RESULTS_DIR)
    return payload


def markdown(payload: dict[str, Any]) -> str:
    rows = []
    for p in POINTS:
        k = key(p)
        row: list[Any] = [k]
        for v in VARIANTS:
            tps = statistics.median(r[k] for r in payload["values"][v])
            row.append(f"{tps:,.0f} ({Spread(tuple(payload['ratios'][v][k]['values'])).text()})")
        rows.append(row)
    faults = [[key(p), *(f"{statistics.median(r[FAULTS + key(p)] for r in payload['values'][v]):,.0f}"
                         for v in VARIANTS)] for p in POINTS]
    return (f"Offline engine texts/s, median of {payload['reps']} interleaved reps, each variant in its own process; "
            f"in brackets the per-rep ratio to per-session arenas, median (min–max). Keep threshold "
            f"{payload['keep_tokens']} padded tokens (a batch above it hands the arena back: at the end of "
            f"the call, or {payload['idle_release_s']:g} s after it by default). "
            f"{env_line(payload['env'])}. Load average at start: {payload['load_at_start']['loadavg'][0]}.\n\n"
            + md_table(["point", *VARIANTS], rows)
            + "\nMinor page faults per call (median over calls and reps): memory the arena handed back and had to "
              "map again.\n\n" + md_table(["point", *VARIANTS], faults) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=0.6)
    args = ap.parse_args()
    if args.worker:
        spec = json.loads(args.worker)
        print(json.dumps(worker(spec["model_dir"], spec["variant"], spec["rep"], spec["seconds"])))
        return
    print(markdown(run(args.model, args.reps, args.seconds)))


if __name__ == "__main__":
    main()
