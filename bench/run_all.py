"""Run the whole benchmark suite in one go and write ``bench/results/`` (JSON, Markdown, PNG) + ``SUMMARY.md``.

Order: untimed preparation (the default model if missing, the precision copies, the peers' venv, the Optimum
export the peers load) → GEMM ceiling → precision (quality per suite and budget, speed; picks the CPU default)
→ offline engine (fp32, static int8) → memory (RSS under the largest request, per arena choice) → served (open
loop: saturation, latency at half of it) → peers (sentence-transformers in process; Infinity over HTTP) →
quality (from ``runs/*/eval``).
Timings are only meaningful on a quiet machine: the suite records the load average and any training
process at the start of every section, and ``--wait-quiet`` polls until none runs, before every section.
Usage: ``python -m bench.run_all [--quick] [--only engine,served] [--wait-quiet]`` (``make bench``).
``--quick`` is a smoke run (a few minutes after preparation) written to ``bench/results/quick/`` instead.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from bench import adaptive as adaptive_bench
from bench import corpus_embed as corpus_bench
from bench import engine as engine_bench
from bench import memory as memory_bench
from bench import peak as peak_bench
from bench import peers as peers_bench
from bench import precision as precision_bench
from bench import quality as quality_bench
from bench import served as served_bench
from bench.common import (
    DEFAULT_MODEL,
    RESULTS_DIR,
    busy_processes,
    env_line,
    environment,
    load_snapshot,
    md_table,
    write_results,
)
from bench.peers import point_ratio

SECTIONS = ("peak", "precision", "engine", "corpus", "memory", "arena", "threads", "served", "profile", "adaptive",
            "peers", "ratios", "quality")
PEERS_RATIO_TARGET = 1.5


def wait_quiet(poll_s: float, max_wait_s: float, settle_load: float = 0.8, max_settle_s: float = 120.0) -> None:
    """Until no training/eval process runs; then up to ``max_settle_s`` more for the 1-min load to settle."""
    t_end = time.monotonic() + max_wait_s
    while busy := busy_processes():
        if time.monotonic() > t_end:
            raise SystemExit(f"still busy after {max_wait_s:.0f} s: {busy}")
        print(f"waiting for a quiet machine: {busy[0]}", flush=True)
        time.sleep(poll_s)
    settle_end = time.monotonic() + max_settle_s
    while os.getloadavg()[0] > settle_load and time.monotonic() < settle_end:
        time.sleep(5)


def _load(out: Path, name: str) -> dict[str, Any] | None:
    path = out / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _yes(ok: bool) -> str:
    return "yes" if ok else "no"


def served_precision(model_dir: Path) -> str:
    """The precision of the model the suite serves (the default model: the CPU default precision)."""
    from mipic.modeldir.manifest import load_manifest

    return load_manifest(model_dir, verify=False).precision


def targets(out: Path) -> list[list[Any]]:
    """One row per target of issue 13 (and the engine rows of issue 6): asked, measured, met."""
    rows: list[list[Any]] = []
    mem = _load(out, "memory")
    if mem:
        for s in mem["served"]:
            if s["arena"] != "shared":
                continue
            rows.append([f"peak RSS ≤ {mem['limits_mb']['peak']:.0f} MB under the largest request, saturated "
                         f"({s['clients']}× {s['texts_per_request']} texts × {s['tokens_per_text']} tokens)",
                         f"{s['peak_mb']:.0f} MB (idle {s['before_mb']:.0f} MB)", _yes(s["peak_ok"])])
            rows.append([f"RSS back within {mem['limits_mb']['settle']:.0f} MB of its pre-load value",
                         f"+{s['after_mb'] - s['before_mb']:.0f} MB ({s['after_mb']:.0f} MB)", _yes(s["settle_ok"])])
    ada = _load(out, "adaptive")
    if ada:
        rows += adaptive_bench.target_rows(ada)
    srv = _load(out, "served")
    if srv:
        for r in srv["results"]:
            want = served_bench.SERVED_TARGETS.get((r["dim"], r["layer"]))
            if want is not None:
                rows.append([f"served ≥ {100 * want:.0f}% of offline at saturation, d{r['dim']}/l{r['layer']} "
                             f"(load generator on the same 2 cores)",
                             f"{100 * r['served_over_offline']:.0f}% ({r['saturation_texts_per_s']:.0f} of "
                             f"{r['offline_texts_per_s']:.0f} texts/s; load generator "
                             f"{r.get('saturation_loadgen_cpu_pct', 0):.0f}% of a core)",
                             _yes(r["served_over_offline"] >= want)])
        for r in srv["results"]:
            if (r["dim"], r["layer"]) in served_bench.LATENCY_BUDGETS and "half_saturation" in r:
                lat = r["half_saturation"]["latency"]
                rows.append([f"p99 ≤ {served_bench.LATENCY_TARGET:g}× one request's batch at half saturation, "
                             f"d{r['dim']}/l{r['layer']}",
                             f"p50/p95/p99 {lat['p50_ms']:.0f}/{lat['p95_ms']:.0f}/{lat['p99_ms']:.0f} ms vs "
                             f"{r['one_request_ms']:.1f} ms: {r['p99_over_one_request']:.1f}×"
                             + (f" (M/D/1 floor at this load {r['md1_p99_floor']:.1f}×)"
                                if "md1_p99_floor" in r else ""),
                             _yes(r["p99_over_one_request"] <= served_bench.LATENCY_TARGET)])
    prec = _load(out, "precision")
    if prec:
        from mipic.training.default_model import DEFAULT_CPU_PRECISION

        measured = prec["default_cpu_precision"]
        ok = [n for n, v in prec["variants"].items() if v.get("quality_ok") and n != "fp32"]
        rows.append([f"CPU default = fastest precision within {prec['tolerance']} of fp32 on every suite and budget",
                     f"measured: {measured} (also within: {', '.join(ok) or 'none'}); code default: "
                     f"{DEFAULT_CPU_PRECISION}", _yes(measured == DEFAULT_CPU_PRECISION)])
    eng = _load(out, "engine")
    if eng:
        L = eng["num_layers"]
        prec_name = eng.get("served_precision", "fp32")
        sc = [c for c in eng["scaling"] if c["precision"] == prec_name and c["layer"] < L]
        if sc:
            worst = min(sc, key=lambda c: c["efficiency"])
            misses = sum(not c["meets_target"] for c in sc)
            rows.append([f"layer k ≥ {engine_bench.SCALING_TARGET}·(L/k)·layer L at every length and batch the "
                         f"batcher forms ({prec_name})",
                         f"worst {worst['efficiency']:.2f} (k={worst['layer']}, ~{worst['length']} tokens, batch "
                         f"{worst['batch']}, d{worst['dim']}); {misses} of {len(sc)} points below",
                         _yes(misses == 0)])
        for length in sorted({p["length"] for p in eng["points"]}):
            pts = [p for p in eng["points"] if p["precision"] == "fp32" and p["length"] == length and p["dim"] == 384]
            if not pts:
                continue
            big = max(p["batch"] for p in pts)
            full = next(p for p in pts if p["batch"] == big and p["layer"] == L)
            if full["frac_of_peak"] is not None:
                rows.append([f"(issue 6) full budget fp32 ≥ 50% of GEMM peak, ~{length} tokens, batch {big}",
                             f"{100 * full['frac_of_peak']:.0f}% ({full['gflops']:.1f} GFLOP/s)",
                             _yes(full["frac_of_peak"] >= 0.5)])
    prs = _load(out, "peers")
    if prs:
        default = f"mipic-{prs.get('default_precision', 'fp32')}"
        ref = next((r for r in prs["inproc"] if r["kind"] == default and "points" in r), None)
        for r in prs["inproc"]:
            if not r["kind"].startswith("st"):
                continue
            if "points" not in r or ref is None:
                rows.append([f"{default} vs {r['kind']} in process", f"not measured: {r.get('error')}", "n/a"])
                continue
            ratios = []
            for p in r["points"]:
                q = next(q for q in ref["points"] if (q["length"], q["dim"]) == (p["length"], p["dim"]))
                ratios.append((point_ratio(q, p), p))
            worst, wp = min(ratios, key=lambda x: x[0].low)  # the lowest lower end
            want = PEERS_RATIO_TARGET if r["kind"] == "st-torch" else 1.0
            detail = ", ".join(f"{sp.median:.2f}× ({sp.low:.2f}–{sp.high:.2f}) (~{p['length']} tok, d{p['dim']})"
                               for sp, p in ratios)
            reps = r.get("reps", 1)
            rows.append([f"{default} ≥ {want:g}× {r['kind']} in process, both lengths, d384/l6 and d64/l6"
                         + (f" — median of {reps} interleaved reps" if reps > 1 else ""),
                         f"lowest {worst.median:.2f}× ({worst.low:.2f} at the lower end; ~{wp['length']} tokens, "
                         f"d{wp['dim']}); {detail}", _yes(worst.met(want))])
        http = prs.get("http") or {}
        if "results" in http:
            for r in http["results"]:
                ratio = r["mipic_saturation_texts_per_s"] / r["infinity_saturation_texts_per_s"]
                rows.append([f"≥ {PEERS_RATIO_TARGET:g}× Infinity over HTTP at saturation, d{r['dim']}/l{r['layer']}",
                             f"{ratio:.2f}× ({r['mipic_saturation_texts_per_s']:.0f} vs "
                             f"{r['infinity_saturation_texts_per_s']:.0f} texts/s)", _yes(ratio >= PEERS_RATIO_TARGET)])
        elif http:
            rows.append(["≥ 1.5× Infinity over HTTP", f"not measured: {http.get('error')}", "n/a"])
    rat = _load(out, "ratios")
    if rat:  # issue 19: every ratio the median of interleaved reps; met only at the spread's lower end
        for t in rat["targets"]:
            rows.append([f"{t['target']} — median of {rat['config']['reps']} interleaved reps",
                         f"{t['median']:.2f} (spread {t['low']:.2f}–{t['high']:.2f})", _yes(t["met"])])
    pool = _load(out, "thread_pool")
    if pool:  # issue 19: early exit as the median of interleaved reps, met only at the spread's lower end
        from bench.ratios import Spread
        from bench.thread_pool import EARLY_EXIT_BOUND

        ee = {k: Spread(tuple(v["values"])) for k, v in pool["early_exit"]["per-session"].items()}
        worst_key = min(ee, key=lambda k: ee[k].low)
        misses = [k for k, v in ee.items() if not v.met(EARLY_EXIT_BOUND)]
        rows.append([f"layer k ≥ {EARLY_EXIT_BOUND}·(L/k)·layer L at every length and batch — median of "
                     f"{pool['config']['reps']} interleaved reps (per-session pools, the default)",
                     f"{len(ee) - len(misses)} of {len(ee)} points met; lowest {worst_key} {ee[worst_key].text()}",
                     _yes(not misses)])
    rows.append(["GPU: CUDA provider with fp16, batch 1–256 per budget",
                 "not measured: no GPU was available to this project's sessions", "n/a"])
    return rows


def sections_table(out: Path) -> str:
    """When each result file was measured and how busy the machine was then (sections may come from
    different invocations, e.g. ``--only engine`` after a full run)."""
    rows = []
    for name in ("peak", "precision", "engine", "memory", "arena_keep", "thread_pool", "served", "profile_served",
                 "peers", "ratios"):
        data = _load(out, name)
        if not data:
            continue
        load = data.get("load_at_start", {})
        rows.append([name, load.get("time", ""), load.get("loadavg", [0.0])[0],
                     ", ".join(load.get("top_cpu", [])) or "none", ", ".join(load.get("busy_processes", [])) or "none",
                     data.get("env", {}).get("commit", "")])
    return ("Sections (load average counts this suite's own threads; \"other CPU users\" are other processes "
            "using ≥ 5% of a core at the section's start):\n\n"
            + md_table(["section", "started", "load avg 1 min", "other CPU users", "training processes", "commit"],
                       rows))


def summary(out: Path, started: dict[str, Any], wall_s: float, command: str) -> str:
    env = environment()
    took = "" if wall_s != wall_s else f" ({wall_s / 60:.1f} min)"  # NaN: summary rewritten without measuring
    parts = [f"# Benchmark results\n\nCommand: `{command}`{took}. {env_line(env)}. "
             f"Load average at start: {started['loadavg'][0]:.2f}"
             f"{'; busy: ' + '; '.join(started['busy_processes']) if started['busy_processes'] else ''}"
             f"{'; top CPU users: ' + ', '.join(started['top_cpu']) if started.get('top_cpu') else ''}.\n",
             "\n" + sections_table(out),
             "\n## Targets (issue 13)\n\n" + md_table(["target", "measured", "met"], targets(out))]
    for name, title in (("peak", "GEMM ceiling"), ("precision", "Precision"), ("engine", "Offline engine"),
                        ("memory", "Memory"),
                        ("arena_keep", "Arena: shared (kept between batches, handed back when idle) vs per-session"),
                        ("thread_pool", "Thread pools: global vs per stage session, and early exit"),
                        ("served", "Served (HTTP)"), ("profile_served", "Live server profile"), ("peers", "Peers"),
                        ("ratios", "Speed ratios with spreads"), ("quality", "Quality per budget")):
        md = out / f"{name}.md"
        if md.is_file():
            parts.append(f"\n## {title}\n\n" + md.read_text())
    return "".join(parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="staged ONNX model directory (a version)")
    ap.add_argument("--runs", type=Path, default=Path("runs"), help="where the trainer wrote <variant>/eval/grid.json")
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny grids, short times, results/quick/")
    ap.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    ap.add_argument("--skip-infinity", action="store_true", help="leave the Infinity server out of the peers")
    ap.add_argument("--wait-quiet", action="store_true",
                    help="before every section, poll until no training process runs and the load settles")
    ap.add_argument("--out", type=Path, default=None, help="results directory (default bench/results[/quick])")
    ap.add_argument("--summary-only", metavar="COMMAND", default=None,
                    help="measure nothing: rewrite SUMMARY.md from the result files, naming COMMAND as their source")
    args = ap.parse_args()
    if args.summary_only is not None:
        out = args.out or (RESULTS_DIR / "quick" if args.quick else RESULTS_DIR)
        first = _load(out, "peak") or {}
        text = summary(out, first.get("load_at_start") or load_snapshot(), float("nan"), args.summary_only)
        (out / "SUMMARY.md").write_text(text)
        print(text.split("\n## GEMM")[0])
        return
    sections = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        ap.error(f"unknown sections {sorted(unknown)}; choose from {SECTIONS}")
    out = args.out or (RESULTS_DIR / "quick" if args.quick else RESULTS_DIR)
    out.mkdir(parents=True, exist_ok=True)

    # Untimed preparation first, so that no export, quantization or install overlaps a measurement.
    from bench.prepare import ensure_model, ensure_optimum_export, ensure_peers_env, ensure_precisions

    ensure_model(args.model)
    if served_precision(args.model) != "fp32":
        ap.error(f"{args.model} is not an fp32 export: the suite derives every other precision from fp32")
    copies = ensure_precisions(args.model) if {"precision", "engine", "peers"} & set(sections) else {}
    if {"peers", "ratios"} & set(sections):
        ensure_optimum_export()
        if not args.skip_infinity:
            ensure_peers_env()
    def section(name: str, timed: bool = True) -> bool:
        if name not in sections:
            return False
        if args.wait_quiet and timed:
            wait_quiet(60, 6 * 3600)
        print(f"== {name}", flush=True)
        return True

    if args.wait_quiet:
        wait_quiet(60, 6 * 3600)
    started = load_snapshot()
    if started["busy_processes"]:
        print(f"WARNING: timings will be noisy, busy: {started['busy_processes']}", flush=True)
    t0 = time.perf_counter()

    peak_gflops = (_load(out, "peak") or {}).get("peak_gflops")
    if section("peak"):
        load = load_snapshot()
        result = peak_bench.measure_peak(0.3 if args.quick else 1.5)
        env = environment()
        write_results("peak", {"env": env, "load_at_start": load, **result},
                      peak_bench.markdown(result, env, load), out)
        peak_gflops = result["peak_gflops"]
        print(f"   peak {peak_gflops:.1f} GFLOP/s ({result['peak_from']})", flush=True)
    if section("precision"):
        cfg = precision_bench.quick_config() if args.quick else precision_bench.PrecisionConfig()
        precision_bench.run(args.model, copies, cfg, out)
    if section("engine"):
        grid = (engine_bench.EngineGrid(lengths=(16, 256), batches=(1, 32), seconds=0.05, min_iters=1, layers=(1, 3, 6))
                if args.quick else engine_bench.EngineGrid())
        variants = [engine_bench.Variant("fp32", args.model)]
        if "int8" in copies:
            variants.append(engine_bench.Variant("int8", copies["int8"]))
        engine_bench.run(args.model, variants, grid, peak_gflops, out)
    if section("corpus"):  # mipic embed against the engine (issue 22)
        sizes: dict[str, int] = {"texts": 600, "reps": 1, "bounded": 0} if args.quick else {}
        corpus_bench.run(args.model, results_dir=out, **sizes)
    if section("memory"):
        memory_bench.run(args.model, memory_bench.quick_config() if args.quick else memory_bench.MemoryConfig(), out)
    if section("arena"):  # the shared arena against per-session arenas (issue 19)
        from bench import arena_keep

        arena_keep.run(args.model, reps=2 if args.quick else 5, seconds=0.1 if args.quick else 0.6, results_dir=out)
    if section("threads"):  # one global onnxruntime thread pool against one per stage session (issue 19)
        from bench import thread_pool

        thread_pool.run(args.model, thread_pool.quick_config() if args.quick else thread_pool.PoolConfig(), out)
    served_cfg = served_bench.quick_config() if args.quick else served_bench.ServedConfig()
    if section("served"):
        served_bench.run(args.model, served_cfg, out)
    if section("profile"):  # where the live server's CPU goes at saturation (issue 19)
        from bench import profile_served

        profile_served.run(args.model, profile_served.ProfileConfig(seconds=2.0, budgets=((64, 1),))
                           if args.quick else profile_served.ProfileConfig(), out)
    if section("adaptive"):  # layer "auto" against fixed layer 6 under load (issue 20)
        adaptive_bench.run(args.model, adaptive_bench.AdaptiveConfig(
            factors=(0.5, 3.0), seconds=4.0) if args.quick else adaptive_bench.AdaptiveConfig(), results_dir=out,
            with_infinity=not (args.quick or args.skip_infinity))
    if section("peers"):
        cfg = peers_bench.quick_config() if args.quick else peers_bench.PeersConfig()
        peers_bench.run(args.model, copies.get("int8"), cfg, served_cfg, _load(out, "served"),
                        infinity=not args.skip_infinity, results_dir=out,
                        default_precision=served_precision(args.model))
    if section("ratios"):  # every speed ratio with its spread (issue 19)
        from bench import ratios as ratios_bench

        cfg_r = ratios_bench.quick_config() if args.quick else ratios_bench.RatiosConfig(
            infinity=not args.skip_infinity)
        ratios_bench.run(args.model, cfg_r, out)
    if section("quality", timed=False):
        quality_bench.run(args.runs, out)
    wall = time.perf_counter() - t0
    command = "python -m bench.run_all" + (" --quick" if args.quick else "") + (
        f" --only {args.only}" if set(sections) != set(SECTIONS) else "")
    text = summary(out, started, wall, command)
    (out / "SUMMARY.md").write_text(text)
    print(f"\nwrote {out}/SUMMARY.md ({wall / 60:.1f} min)")
    print(text.split("\n## GEMM")[0])


if __name__ == "__main__":
    main()
