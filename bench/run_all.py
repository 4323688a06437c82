"""Run the whole benchmark suite in one go and write ``bench/results/`` (JSON, Markdown, PNG) + ``SUMMARY.md``.

Order: untimed preparation (int8 copy, Optimum export for the peers, fused-graph copy) → GEMM ceiling →
offline engine (fp32, int8) → served (open loop) → peers (in process; Infinity over HTTP) → quality (from
``runs/*/eval``) → settings (engine-setting experiments the lead may adopt: non-spinning thread pools,
fused layer graphs; offline and served).
Timings are only meaningful on a quiet machine: the suite records the load average and any training
process at the start of every section, and ``--wait-quiet`` polls until none runs.
Usage: ``python -m bench.run_all [--quick] [--only engine,served] [--wait-quiet]`` (``make bench``).
``--quick`` is a smoke run (about three minutes) written to ``bench/results/quick/`` instead.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from bench import engine as engine_bench
from bench import peak as peak_bench
from bench import peers as peers_bench
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

SECTIONS = ("peak", "engine", "served", "peers", "quality", "settings")


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


def targets(out: Path) -> list[list[Any]]:
    """One row per target of issue 6: what was asked, what was measured, met or not."""
    rows: list[list[Any]] = []
    eng = _load(out, "engine")
    if eng:
        L = eng["num_layers"]
        for length in sorted({p["length"] for p in eng["points"]}):
            pts = [p for p in eng["points"] if p["precision"] == "fp32" and p["length"] == length and p["dim"] == 384]
            if not pts:
                continue
            big = max(p["batch"] for p in pts)
            full = next(p for p in pts if p["batch"] == big and p["layer"] == L)
            if full["frac_of_peak"] is not None:
                rows.append([f"full budget (d384/l{L}) ≥ 50% of GEMM peak, ~{length} tokens, batch {big}",
                             f"{100 * full['frac_of_peak']:.0f}% ({full['gflops']:.1f} GFLOP/s)",
                             "yes" if full["frac_of_peak"] >= 0.5 else "no"])
            sc = [c for c in eng["scaling"] if c["precision"] == "fp32" and c["length"] == length and c["dim"] == 384
                  and c["batch"] == big and c["layer"] < L]
            if sc:
                worst = min(sc, key=lambda c: c["efficiency"])
                rows.append([f"layer k ≥ 0.8·(L/k)·layer L, ~{length} tokens, batch {big}",
                             f"worst k={worst['layer']}: {worst['efficiency']:.2f}",
                             "yes" if all(c["meets_target"] for c in sc) else "no"])
    srv = _load(out, "served")
    if srv:
        for r in srv["results"]:
            rows.append([f"served ≥ 85% of offline at saturation, d{r['dim']}/l{r['layer']}",
                         f"{100 * r['served_over_offline']:.0f}%", "yes" if r["served_over_offline"] >= 0.85 else "no"])
    prs = _load(out, "peers")
    if prs:
        ref = next((r for r in prs["inproc"] if r["kind"] == "mipic-fp32" and "points" in r), None)
        for r in prs["inproc"]:
            if not r["kind"].startswith("st"):
                continue
            if "points" not in r or ref is None:
                rows.append([f"faster than {r['kind']}", f"not measured: {r.get('error')}", "n/a"])
                continue
            ratios = []
            for p in r["points"]:
                q = next(q for q in ref["points"] if (q["length"], q["dim"]) == (p["length"], p["dim"]))
                ratios.append((q["texts_per_s"] / p["texts_per_s"], p))
            worst_ratio, wp = min(ratios, key=lambda x: x[0])
            rows.append([f"faster than {r['kind']} in process (d384/l6, d64/l6; all lengths)",
                         f"worst {worst_ratio:.2f}× (~{wp['length']} tokens, d{wp['dim']})",
                         "yes" if worst_ratio > 1 else "no"])
        http = prs.get("http") or {}
        if "results" in http:
            for r in http["results"]:
                ratio = r["mipic_saturation_texts_per_s"] / r["infinity_saturation_texts_per_s"]
                rows.append([f"faster than Infinity over HTTP at saturation, d{r['dim']}/l{r['layer']}",
                             f"{ratio:.2f}×", "yes" if ratio > 1 else "no"])
        elif http:
            rows.append(["faster than Infinity over HTTP", f"not measured: {http.get('error')}", "n/a"])
    return rows


def sections_table(out: Path) -> str:
    """When each result file was measured and how busy the machine was then (sections may come from
    different invocations, e.g. ``--only engine`` after a full run)."""
    rows = []
    for name in ("peak", "engine", "served", "peers", "engine_settings", "served_nospin"):
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
             "\n## Targets\n\n" + md_table(["target", "measured", "met"], targets(out))]
    for name, title in (("peak", "GEMM ceiling"), ("engine", "Offline engine"), ("served", "Served (HTTP)"),
                        ("peers", "Peers"), ("quality", "Quality per budget"),
                        ("engine_settings", "Experiment: engine settings (offline)"),
                        ("served_nospin", "Experiment: served with non-spinning thread pools")):
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
    ap.add_argument("--no-int8", action="store_true", help="leave the int8 copy out")
    ap.add_argument("--wait-quiet", action="store_true", help="poll until no training process runs, then start")
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

    # Untimed preparation first, so that no export or quantization overlaps a measurement.
    from bench.prepare import ensure_fused, ensure_int8, ensure_optimum_export

    int8 = None if args.no_int8 or not {"engine", "peers"} & set(sections) else ensure_int8(args.model)
    if "peers" in sections:
        ensure_optimum_export()
    fused = ensure_fused(args.model) if "settings" in sections else None
    if args.wait_quiet:
        wait_quiet(60, 6 * 3600)
    started = load_snapshot()
    if started["busy_processes"]:
        print(f"WARNING: timings will be noisy, busy: {started['busy_processes']}", flush=True)
    t0 = time.perf_counter()

    peak_gflops = (_load(out, "peak") or {}).get("peak_gflops")
    if "peak" in sections:
        print("== GEMM ceiling", flush=True)
        load = load_snapshot()
        result = peak_bench.measure_peak(0.3 if args.quick else 1.5)
        env = environment()
        write_results("peak", {"env": env, "load_at_start": load, **result},
                      peak_bench.markdown(result, env, load), out)
        peak_gflops = result["peak_gflops"]
        print(f"   peak {peak_gflops:.1f} GFLOP/s ({result['peak_from']})", flush=True)
    if "engine" in sections:
        print("== offline engine", flush=True)
        grid = (engine_bench.EngineGrid(lengths=(16, 256), batches=(1, 32), seconds=0.05, min_iters=1, layers=(1, 3, 6))
                if args.quick else engine_bench.EngineGrid())
        variants = [engine_bench.Variant("fp32", args.model)]
        if int8 is not None:
            variants.append(engine_bench.Variant("int8", int8))
        engine_bench.run(args.model, variants, grid, peak_gflops, out)
    served_cfg = served_bench.quick_config() if args.quick else served_bench.ServedConfig()
    if "served" in sections:
        print("== served", flush=True)
        served_bench.run(args.model, served_cfg, out)
    if "peers" in sections:
        print("== peers", flush=True)
        cfg = peers_bench.quick_config() if args.quick else peers_bench.PeersConfig()
        peers_bench.run(args.model, int8, cfg, served_cfg, _load(out, "served"), infinity=not args.skip_infinity,
                        results_dir=out)
    if "quality" in sections:
        print("== quality", flush=True)
        quality_bench.run(args.runs, out)
    if "settings" in sections:
        print("== engine settings experiments", flush=True)
        grid = (engine_bench.EngineGrid(lengths=(16,), batches=(1, 32), dims=(384,), seconds=0.05, min_iters=1,
                                        layers=(1, 6)) if args.quick else engine_bench.SETTINGS_GRID)
        engine_bench.settings_experiments(args.model, fused, grid, peak_gflops, out)
        exp = served_bench.ServedConfig(**{**served_cfg.__dict__, "budgets": ((384, 6), (64, 1)), "no_spin": True})
        served_bench.run(args.model, exp, out, name="served_nospin")
    wall = time.perf_counter() - t0
    command = "python -m bench.run_all" + (" --quick" if args.quick else "") + (
        f" --only {args.only}" if set(sections) != set(SECTIONS) else "")
    text = summary(out, started, wall, command)
    (out / "SUMMARY.md").write_text(text)
    print(f"\nwrote {out}/SUMMARY.md ({wall / 60:.1f} min)")
    print(text.split("\n## GEMM")[0])


if __name__ == "__main__":
    main()
