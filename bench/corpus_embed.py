"""`mipic embed` against the offline engine: 20,000 ~16-token texts at d384/l6 and d64/l1, texts/s and peak RSS.

Every measurement is its own process, so its peak RSS (``ru_maxrss`` from ``wait4``) is its own:

* **engine, B=128**: ``LoadedModel.run`` on the pre-tokenized texts in batches of 128 rows (the server's largest
  batch; ``bench/engine.py``'s B=128 point). Model load and tokenization are not timed.
* **engine, same cuts**: ``LoadedModel.run`` on windows of 4096 rows with the corpus job's 2048 padded tokens
  per sub-batch: exactly the compute ``mipic embed`` does, without reading, tokenizing or writing.
* **mipic embed**: ``mipic embed IN.jsonl OUT.parquet --dim D --layer L --no-progress``: reads the JSONL,
  tokenizes, runs, writes the parts and assembles the Parquet file. Its throughput is the time the command
  reports (plan → renamed output; model load excluded, as for the engine); the process's wall time, start-up
  and model load included, is listed too.

Variants alternate ``--reps`` times and the table keeps each one's best rep (the machine is shared; the load
average is recorded before every run). Usage: ``python -m bench.corpus_embed [--reps 2] [--texts 20000]``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
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

BUDGETS = ((384, 6), (64, 1))
TARGET = 0.95  # mipic embed ≥ 95 % of the engine's texts/s at the same budget (issue 22)
VARIANTS = ("engine_b128", "engine_cuts", "embed")


def _child_engine(args: argparse.Namespace) -> None:
    from mipic.corpus import DEFAULT_BATCH_TOKENS, DEFAULT_WINDOW_ROWS
    from mipic.modeldir.runner import DEFAULT_MAX_BATCH_TOKENS, LoadedModel, Row

    cuts = args.child == "engine_cuts"
    model = LoadedModel(args.model, provider="cpu",
                        max_batch_tokens=DEFAULT_BATCH_TOKENS if cuts else DEFAULT_MAX_BATCH_TOKENS)
    texts = [json.loads(line)["text"] for line in args.input.read_text().splitlines()]
    ids = [e.ids for e in model.tokenizer.encode(texts)]
    step = DEFAULT_WINDOW_ROWS if cuts else 128
    model.run([Row(ids=i, dim=args.dim, layer=args.layer) for i in ids[:step]])  # onnxruntime sizes its buffers
    t0 = time.perf_counter()
    for s in range(0, len(ids), step):
        model.run([Row(ids=i, dim=args.dim, layer=args.layer) for i in ids[s:s + step]])
    seconds = time.perf_counter() - t0
    print(json.dumps({"texts_per_s": len(ids) / seconds, "seconds": seconds}))


def _run(cmd: list[str]) -> tuple[str, float, int]:
    """stdout, wall seconds and peak RSS (bytes, the child's own ``ru_maxrss`` from ``wait4``)."""
    import tempfile

    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True,
                                env={**os.environ, "HF_HUB_OFFLINE": "1"})
        assert proc.stdout is not None
        out = proc.stdout.read()  # until the child exits; stderr goes to a file, so neither pipe can block it
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t0
        if proc.returncode:
            err.seek(0)
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err.read()[-2000:]}")
    return out, wall, usage.ru_maxrss * 1024


def measure(variant: str, model: Path, src: Path, dim: int, layer: int) -> dict[str, Any]:
    load = os.getloadavg()[0]
    if variant == "embed":
        out_path = TMP_DIR / f"corpus_embed_d{dim}_l{layer}.parquet"
        cmd = [sys.executable, "-m", "mipic.cli", "embed", str(src), str(out_path), "--model", str(model),
               "--dim", str(dim), "--layer", str(layer), "--no-progress", "--overwrite"]
        out, wall, rss = _run(cmd)
        m = re.search(r"in ([\d.]+) s \((\d+) texts/s", out)
        if m is None:
            raise RuntimeError(f"unexpected output of mipic embed: {out!r}")
        seconds = float(m.group(1))
        n = int(re.search(r"embedded (\d+) texts", out).group(1))  # type: ignore[union-attr]
        out_path.unlink(missing_ok=True)
        point = {"texts_per_s": n / seconds, "seconds": seconds, "wall_s": wall, "wall_texts_per_s": n / wall}
    else:
        cmd = [sys.executable, "-m", "bench.corpus_embed", "--child", variant, "--input", str(src), "--model",
               str(model), "--dim", str(dim), "--layer", str(layer)]
        out, wall, rss = _run(cmd)
        point = {**json.loads(out.strip().splitlines()[-1]), "wall_s": wall}
    point.update({"variant": variant, "dim": dim, "layer": layer, "peak_rss_mb": rss / 2**20, "load_1m": load})
    print(f"  {variant:<12} d{dim} l{layer}: {point['texts_per_s']:7.0f} texts/s, peak RSS "
          f"{point['peak_rss_mb']:.0f} MB (load {load:.2f})", flush=True)
    return point


def best(points: list[dict[str, Any]], variant: str, dim: int, layer: int) -> dict[str, Any]:
    sel = [p for p in points if (p["variant"], p["dim"], p["layer"]) == (variant, dim, layer)]
    return max(sel, key=lambda p: p["texts_per_s"])


def per_rep(points: list[dict[str, Any]], dim: int, layer: int) -> str:
    """embed / the better engine variant of the same rep, for each rep (how much the shared machine moves it)."""
    out = []
    for rep in sorted({p["rep"] for p in points}):
        at = {p["variant"]: p["texts_per_s"] for p in points if (p["dim"], p["layer"], p["rep"]) == (dim, layer, rep)}
        out.append(f"{100 * at['embed'] / max(at['engine_b128'], at['engine_cuts']):.0f}%")
    return ", ".join(out)


def markdown(payload: dict[str, Any]) -> str:
    points = payload["points"]
    rows: list[list[Any]] = []
    for dim, layer in BUDGETS:
        b128, cuts, emb = (best(points, v, dim, layer) for v in VARIANTS)
        engine = max(b128["texts_per_s"], cuts["texts_per_s"])
        ratio = emb["texts_per_s"] / engine
        rows.append([f"d{dim}/l{layer}", b128["texts_per_s"], cuts["texts_per_s"], emb["texts_per_s"],
                     f"{100 * ratio:.0f}%{'' if ratio >= TARGET else ' ✗'}", per_rep(points, dim, layer),
                     emb["wall_texts_per_s"], b128["peak_rss_mb"], emb["peak_rss_mb"]])
    start, end = payload["load_at_start"]["loadavg"], payload["load_at_end"]["loadavg"]
    return (
        f"`mipic embed` against the offline engine ({payload['model']}): {payload['texts']:,} texts of "
        f"~{payload['tokens']} tokens (JSONL in, Parquet out, float). {env_line(payload['env'])}. Load average "
        f"(1/5/15 min) at start {start[0]:.2f}/{start[1]:.2f}/{start[2]:.2f}, at end {end[0]:.2f}/{end[1]:.2f}/"
        f"{end[2]:.2f}; best of {payload['reps']} alternating reps. Command: `{payload['command']}`.\n\n"
        + md_table(["budget", "engine B=128 texts/s", "engine, same cuts texts/s", "mipic embed texts/s",
                    f"embed / best engine (target ≥ {100 * TARGET:.0f}%)", "same, rep by rep",
                    "embed incl. start-up texts/s",
                    "engine peak RSS MB", "embed peak RSS MB"], rows)
        + "\nengine B=128: `LoadedModel.run`, pre-tokenized, batches of 128 rows; same cuts: windows of 4096 rows "
        "cut at 2048 padded tokens, as `mipic embed` cuts them. embed: reading, tokenizing (on a helper thread, "
        "overlapped with the runner), writing and assembling included; model load excluded (as for the engine), "
        "then the whole process's rate beside it.\n"
        + "".join(f"\nMemory is bounded by the window, not the corpus: {c['texts']:,} texts at "
                  f"d{c['dim']}/l{c['layer']} peaked at {c['peak_rss_mb']:.0f} MB ({c['texts_per_s']:,.0f} texts/s, "
                  f"load {c['load_1m']:.2f}; {c['command']}).\n" for c in payload.get("bounded_checks", []))
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--texts", type=int, default=20_000)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--bounded", type=int, default=80_000,
                    help="then embed this many texts at d64/l1 once: peak RSS must not grow with the corpus (0: skip)")
    ap.add_argument("--child", choices=("engine_b128", "engine_cuts"), default=None, help=argparse.SUPPRESS)
    ap.add_argument("--input", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--dim", type=int, default=384, help=argparse.SUPPRESS)
    ap.add_argument("--layer", type=int, default=6, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child_engine(args)
        return
    run(args.model, args.texts, args.tokens, args.reps, args.bounded,
        command="python -m bench.corpus_embed " + " ".join(sys.argv[1:]))


def run(model: Path, texts: int = 20_000, tokens: int = 16, reps: int = 2, bounded: int = 80_000,
        results_dir: Path | None = None, command: str = "python -m bench.corpus_embed") -> dict[str, Any]:
    """Measure, write ``corpus_embed.{json,md}`` and return the payload (``make bench``'s "corpus" section)."""
    TMP_DIR.mkdir(parents=True, exist_ok=True)
    src = TMP_DIR / f"corpus_{texts}x{tokens}.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in make_texts(texts, tokens, seed=22)))
    payload: dict[str, Any] = {"env": environment(), "load_at_start": load_snapshot(), "texts": texts,
                               "tokens": tokens, "reps": reps, "model": str(model), "command": command}
    points: list[dict[str, Any]] = []
    for rep in range(reps):
        print(f"rep {rep + 1}/{reps}", flush=True)
        for dim, layer in BUDGETS:
            for variant in VARIANTS:
                points.append({**measure(variant, model, src, dim, layer), "rep": rep})
    src.unlink()
    payload["points"] = points
    payload["load_at_end"] = load_snapshot()
    if bounded:
        big = TMP_DIR / f"corpus_{bounded}x{tokens}.jsonl"
        big.write_text("".join(json.dumps({"text": t}) + "\n" for t in make_texts(bounded, tokens, seed=23)))
        check = measure("embed", model, big, 64, 1)
        big.unlink()
        payload["bounded_checks"] = [{**check, "texts": bounded, "command": f"`--bounded {bounded}`"}]
    md = markdown(payload)
    write_results("corpus_embed", payload, md, results_dir or RESULTS_DIR)
    print(md)
    return payload


def rewrite() -> None:
    """Rewrite corpus_embed.md from corpus_embed.json (after a change to the table, without measuring again)."""
    payload = json.loads((RESULTS_DIR / "corpus_embed.json").read_text())
    (RESULTS_DIR / "corpus_embed.md").write_text(markdown(payload))


if __name__ == "__main__":
    main()
