"""Peers on the same machine, same model (all-MiniLM-L6-v2), same inputs, same run, as ratios to mipic.

In process (tokenization included, one batch per call): mipic's engine (fp32, and static int8) against
sentence-transformers ``encode`` with its torch backend and its ONNX backend (an Optimum export),
``truncate_dim`` for dim 64. Each runs in its own child process, so torch's threads never share a
process with onnxruntime's. Over HTTP: the Infinity server (``infinity-emb``, optimum engine, from the
peers venv) under the same open-loop load generator, texts and offered rates as ``mipic serve``, at
dim 384 and at dim 64 (``dimensions``), both at the full depth. Every peer's vectors are also checked
against mipic's (cosine, and whether a dim-64 vector comes back unit length).
Usage: ``python -m bench.peers [--quick] [--skip-infinity]``.
"""

from __future__ import annotations

import argparse
import functools
import json
import subprocess
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import (
    DEFAULT_MODEL,
    RESULTS_DIR,
    TMP_DIR,
    env_line,
    environment,
    load_snapshot,
    make_texts,
    md_table,
    request_batches,
    time_calls,
    write_results,
)
from bench.ratios import Spread, merge_runs, paired_ratios, rotated
from bench.served import ServedConfig, saturation, sweep

Budget = tuple[int, int]
CHECK_TEXTS = ["A man is playing a guitar.", "Someone plays an instrument.", "The stock market fell sharply today."]


@dataclass(frozen=True)
class PeersConfig:
    lengths: tuple[int, ...] = (16, 256)
    batch: int = 32
    budgets: tuple[Budget, ...] = ((384, 6), (64, 6))
    seconds: float = 1.0
    min_iters: int = 1
    http_budgets: tuple[Budget, ...] = ((384, 6), (64, 6))
    reps: int = 5  # in-process repetitions, engines interleaved in rotated order; ratios are per rep


# --------------------------------------------------------------------------- in-process (child processes)


def _encoder(kind: str, path: str) -> Any:
    """A function texts, dim, layer → (N, dim) unit vectors, for one engine."""
    if kind.startswith("mipic"):
        from mipic.modeldir.runner import LoadedModel, Row

        model = LoadedModel(Path(path), provider="cpu", verify_checksums=False)

        def enc(texts: list[str], dim: int, layer: int) -> np.ndarray:
            rows = [Row(ids=e.ids, dim=dim, layer=layer) for e in model.tokenizer.encode(texts)]
            return np.stack(model.run(rows))

        return enc
    from sentence_transformers import SentenceTransformer

    backend = "onnx" if kind == "st-onnx" else "torch"
    st = SentenceTransformer(path, device="cpu", backend=backend)

    def enc_st(texts: list[str], dim: int, layer: int) -> np.ndarray:
        if layer != st[0].auto_model.config.num_hidden_layers:
            raise ValueError("sentence-transformers runs the full depth only")
        out = st.encode(texts, batch_size=len(texts), normalize_embeddings=True, convert_to_numpy=True,
                        truncate_dim=None if dim == st.get_sentence_embedding_dimension() else dim)
        return np.asarray(out)

    return enc_st


def inproc_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Runs in a child process: load one engine, time it on every (length, budget), return the numbers."""
    import importlib.metadata as md

    enc = _encoder(spec["kind"], spec["path"])
    points = []
    for length in spec["lengths"]:
        texts = make_texts(spec["batch"], length, seed=100 + length)
        for dim, layer in spec["budgets"]:
            enc(texts, dim, layer)  # warm (first call on this shape)
            times = time_calls(functools.partial(enc, texts, dim, layer), spec["seconds"], spec["min_iters"])
            points.append({"length": length, "dim": dim, "layer": layer, "batch": spec["batch"], "iters": len(times),
                           "texts_per_s": spec["batch"] / float(np.mean(times)),
                           "batch_ms_p50": float(np.median(times)) * 1000})
    check = {f"{d}": enc(CHECK_TEXTS, d, ly).tolist() for d, ly in spec["budgets"]}
    versions = {d: md.version(d) for d in ("onnxruntime", "torch", "sentence-transformers", "optimum")
                if _has(d)}
    threads: dict[str, Any] = {}
    if spec["kind"].startswith("st"):
        import torch

        threads["torch_threads"] = torch.get_num_threads()
    return {"kind": spec["kind"], "path": spec["path"], "points": points, "check": check, "versions": versions,
            **threads}


def _has(dist: str) -> bool:
    import importlib.metadata as md

    try:
        md.version(dist)
        return True
    except md.PackageNotFoundError:
        return False


def merge_reps(reps: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per-engine results of several repetitions (each a list in the same engine order) → one entry per engine
    (:func:`bench.ratios.merge_runs`: texts/s and batch p50 the median over reps, every rep's texts/s kept for
    rep-by-rep ratios); an engine that failed in any rep keeps that rep's error."""
    return [merge_runs(per_engine, ("texts_per_s", "batch_ms_p50"), ("iters",))
            for per_engine in zip(*reps, strict=True)]


def point_ratio(ref: dict[str, Any], point: dict[str, Any]) -> Spread:
    """ref's texts/s ÷ point's, rep by rep (:func:`bench.ratios.paired_ratios`; one rep: the single ratio)."""
    return paired_ratios(ref.get("texts_per_s_reps") or [ref["texts_per_s"]],
                         point.get("texts_per_s_reps") or [point["texts_per_s"]])


def run_inproc(kind: str, path: Path, cfg: PeersConfig) -> dict[str, Any]:
    spec = {"kind": kind, "path": str(path), "lengths": list(cfg.lengths), "batch": cfg.batch,
            "budgets": [list(b) for b in cfg.budgets], "seconds": cfg.seconds, "min_iters": cfg.min_iters}
    cmd = [sys.executable, "-m", "bench.peers", "--worker", json.dumps(spec)]
    load = load_snapshot()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        err = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        return {"kind": kind, "path": str(path), "error": err, "stderr_tail": proc.stderr[-4000:],
                "load_at_start": load}
    return {**json.loads(lines[-1]), "load_at_start": load}


# --------------------------------------------------------------------------- HTTP


def infinity_check(url: str, budgets: tuple[Budget, ...]) -> dict[str, Any]:
    import httpx

    from bench.servers import INFINITY_MODEL_NAME

    out = {}
    for dim, _layer in budgets:
        body = {"model": INFINITY_MODEL_NAME, "input": CHECK_TEXTS, "dimensions": dim}
        r = httpx.post(f"{url}/embeddings", json=body, timeout=60)
        r.raise_for_status()
        out[str(dim)] = [d["embedding"] for d in sorted(r.json()["data"], key=lambda d: d["index"])]
    return out


def run_http(model_dir: Path, infinity_dir: Path, cfg: PeersConfig, served_cfg: ServedConfig,
             served_payload: dict[str, Any] | None) -> dict[str, Any]:
    """Infinity at the same offered rates as mipic's served sweep (reused from ``served_payload`` when it has
    the budget with the same texts and timing, else measured here)."""
    from bench.loadgen import Target
    from bench.servers import INFINITY_MODEL_NAME, infinity_command, infinity_server, mipic_server

    batches = request_batches(served_cfg.texts_per_request, served_cfg.tokens)
    mipic_points: dict[Budget, dict[str, Any]] = {}
    if served_payload is not None:
        sc = served_payload["config"]
        if (sc["tokens"], sc["texts_per_request"], sc["seconds"]) == (
                served_cfg.tokens, served_cfg.texts_per_request, served_cfg.seconds):
            for r in served_payload["results"]:
                mipic_points[(r["dim"], r["layer"])] = r
    missing = [b for b in cfg.http_budgets if b not in mipic_points]
    if missing:
        from bench.served import offline_reference

        offline = offline_reference(model_dir, ServedConfig(**{**served_cfg.__dict__, "budgets": tuple(missing)}))
        with mipic_server(model_dir) as (url, _pid):
            for dim, layer in missing:
                ref = offline[(dim, layer)]["texts_per_s"]
                rates = [f * ref / served_cfg.texts_per_request for f in served_cfg.fractions]
                pts = sweep(Target(url, "/v1/embeddings", {"dimensions": dim, "layer": layer}), batches, rates,
                            served_cfg.seconds, served_cfg.max_requests, f"mipic d={dim} l={layer}")
                mipic_points[(dim, layer)] = {"dim": dim, "layer": layer, "offline_texts_per_s": ref, "points": pts,
                                              "saturation_texts_per_s": saturation(pts)["achieved_texts_per_s"]}
    load = load_snapshot()
    results = []
    with infinity_server(infinity_dir) as (url, _pid):
        check = infinity_check(url, cfg.http_budgets)
        for dim, layer in cfg.http_budgets:
            mp = mipic_points[(dim, layer)]
            rates = [p["offered_rps"] for p in mp["points"]]
            target = Target(url, "/embeddings", {"model": INFINITY_MODEL_NAME, "dimensions": dim})
            pts = sweep(target, batches, rates, served_cfg.seconds, served_cfg.max_requests, f"infinity d={dim}")
            results.append({"dim": dim, "layer": layer, "infinity_points": pts, "mipic_points": mp["points"],
                            "infinity_saturation_texts_per_s": saturation(pts)["achieved_texts_per_s"],
                            "mipic_saturation_texts_per_s": mp["saturation_texts_per_s"]})
    return {"load_at_infinity_start": load, "results": results, "check": check,
            "infinity_command": " ".join(["infinity_emb", *infinity_command(0)[3:]]) + " (cwd = Optimum export)"}


# --------------------------------------------------------------------------- agreement


def agreement(ref: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    """Per dim: worst cosine between mipic's and the peer's vectors, and the peer's worst |norm - 1|."""
    out = {}
    for dim, vecs in other.items():
        if dim not in ref:
            continue
        a = np.asarray(ref[dim], dtype=np.float64)
        b = np.asarray(vecs, dtype=np.float64)
        norms = np.linalg.norm(b, axis=1)
        cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / norms
        out[dim] = {"min_cosine": float(cos.min()), "max_norm_error": float(np.abs(norms - 1).max())}
    return out


# --------------------------------------------------------------------------- report


def markdown(payload: dict[str, Any]) -> str:
    env, cfg = payload["env"], payload["config"]
    inproc = payload["inproc"]
    default = f"mipic-{payload.get('default_precision', 'fp32')}"
    ref = next((r for r in inproc if r["kind"] == default and "points" in r), None)
    parts = [f"Same model (all-MiniLM-L6-v2), same inputs, same run. {env_line(env)}. "
             f"Load average at start: {payload['load_at_start']['loadavg'][0]:.2f}. Ratios are against "
             f"{default}, the default serving precision (bench/results/precision.md).\n"]
    rows = []
    for r in inproc:
        if "points" not in r:
            rows.append([r["kind"], "", "", "", f"failed: {r['error']}", ""])
            continue
        for p in r["points"]:
            base = next((q for q in (ref or {}).get("points", []) if (q["length"], q["dim"], q["layer"])
                         == (p["length"], p["dim"], p["layer"])), None)
            sp = point_ratio(base, p) if base else None
            ratio = f"{sp.median:.2f}× ({sp.low:.2f}–{sp.high:.2f})" if sp else "nan"
            rows.append([r["kind"], p["length"], f"d{p['dim']}/l{p['layer']}", p["texts_per_s"],
                         p["batch_ms_p50"], ratio])
    n_reps = next((r.get("reps", 1) for r in inproc if "points" in r), 1)
    parts.append(f"\n### In process, tokenization included, batch {cfg['batch']}\n\n"
                 f"Median of {n_reps} repetitions, engines interleaved in rotated order, each in its own process; "
                 "the ratio is taken rep by rep (median, min–max).\n\n"
                 + md_table(["engine", "tokens", "budget", "texts/s", "batch p50 ms", f"{default} is faster by"], rows))
    agr = payload.get("agreement", {})
    if agr:
        arows = [[k, d, v["min_cosine"], f"{v['max_norm_error']:.1e}"]
                 for k, per in agr.items() for d, v in per.items()]
        parts.append(f"\nVectors vs {default} on 3 texts (min cosine; max |‖v‖ − 1|, a dim-64 vector should be unit "
                     "length):\n\n" + md_table(["engine", "dim", "min cosine", "max norm error"], arows))
    http = payload.get("http")
    if http and "results" in http:
        hrows = []
        for r in http["results"]:
            for mp, ip in zip(r["mipic_points"], r["infinity_points"], strict=True):
                hrows.append([f"d{r['dim']}/l{r['layer']}", mp["offered_texts_per_s"], mp["achieved_texts_per_s"],
                              ip["achieved_texts_per_s"], mp["latency"]["p50_ms"], ip["latency"]["p50_ms"],
                              mp["latency"]["p99_ms"], ip["latency"]["p99_ms"]])
        srows = [[f"d{r['dim']}/l{r['layer']}", r["mipic_saturation_texts_per_s"], r["infinity_saturation_texts_per_s"],
                  f"{r['mipic_saturation_texts_per_s'] / r['infinity_saturation_texts_per_s']:.2f}×"]
                 for r in http["results"]]
        version = payload.get("infinity_version") or ""
        parts.append(f"\n### Over HTTP: mipic vs Infinity {version} (same open-loop load)\n\n"
                     + md_table(["budget", "mipic texts/s at saturation", "Infinity texts/s at saturation",
                                 "mipic / Infinity"], srows)
                     + "\n" + md_table(["budget", "offered texts/s", "mipic texts/s", "Infinity texts/s",
                                        "mipic p50 ms", "Infinity p50 ms", "mipic p99 ms", "Infinity p99 ms"], hrows))
    elif http:
        parts.append(f"\n### Over HTTP: Infinity\n\nNot measured: `{http.get('error')}`\n")
    for note in payload.get("notes", []):
        parts.append(f"\n- {note}")
    return "".join(parts) + "\n"


def plot(payload: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    inproc = [r for r in payload["inproc"] if "points" in r]
    http = payload.get("http") or {}
    n = 2 if "results" in http else 1
    fig, axes = plt.subplots(1, n, figsize=(6 * n, 4), squeeze=False)
    ax = axes[0][0]
    labels = sorted({(p["length"], p["dim"]) for r in inproc for p in r["points"]})
    width = 0.8 / max(1, len(inproc))
    for k, r in enumerate(inproc):
        vals = [next((p["texts_per_s"] for p in r["points"] if (p["length"], p["dim"]) == lab), 0.0) for lab in labels]
        ax.bar(np.arange(len(labels)) + k * width, vals, width, label=r["kind"])
    ax.set_xticks(np.arange(len(labels)) + 0.4 - width / 2)
    ax.set_xticklabels([f"{t} tok, d{d}" for t, d in labels])
    ax.set_ylabel("texts/s (log)")
    ax.set_yscale("log")
    ax.set_title(f"in process, batch {payload['config']['batch']}, layer 6")
    ax.legend(fontsize=7)
    if n == 2:
        ax2 = axes[0][1]
        for r in http["results"]:
            xs = [p["offered_texts_per_s"] for p in r["mipic_points"]]
            (line,) = ax2.plot(xs, [p["latency"]["p50_ms"] for p in r["mipic_points"]], marker="o",
                               label=f"mipic d{r['dim']}")
            ax2.plot(xs, [p["latency"]["p50_ms"] for p in r["infinity_points"]], marker="s", linestyle="--",
                     color=line.get_color(), label=f"Infinity d{r['dim']}")
        ax2.set_xscale("log")
        ax2.set_yscale("log")
        ax2.set_xlabel("offered texts/s")
        ax2.set_ylabel("p50 latency ms")
        ax2.set_title("over HTTP, open loop")
        ax2.grid(True, which="both", alpha=0.3)
        ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def peers_versions() -> dict[str, str | None]:
    from bench.prepare import peers_python

    python = peers_python()
    if not python.is_file():
        return {}
    code = ("import importlib.metadata as m, json\n"
            "def v(d):\n try: return m.version(d)\n except m.PackageNotFoundError: return None\n"
            "print(json.dumps({d: v(d) for d in ('infinity-emb','torch','transformers','optimum','onnxruntime')}))")
    p = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=False)
    return json.loads(p.stdout) if p.returncode == 0 else {"error": p.stderr[-500:]}


def run(model_dir: Path, int8_dir: Path | None, cfg: PeersConfig, served_cfg: ServedConfig,
        served_payload: dict[str, Any] | None = None, infinity: bool = True,
        results_dir: Path | None = None, default_precision: str = "fp32") -> dict[str, Any]:
    """``model_dir`` is the served (default) model, ``int8_dir`` its static int8 copy (or None); ratios and
    targets are against ``mipic-<default_precision>``."""
    from bench.prepare import ensure_optimum_export, packaged_minilm

    load = load_snapshot()
    env = environment()
    infinity_dir, st_onnx_dir = ensure_optimum_export()
    default = f"mipic-{default_precision}"
    engines: list[tuple[str, Path]] = [(default, model_dir)]
    if int8_dir is not None and default_precision != "int8":
        engines.append(("mipic-int8", int8_dir))
    engines += [("st-torch", packaged_minilm()), ("st-onnx", st_onnx_dir)]
    reps = []
    for rep in range(max(1, cfg.reps)):
        got = {}
        for kind, path in rotated(engines, rep):  # no engine always first or last
            print(f"peers: in process {kind} (rep {rep + 1}/{cfg.reps})", flush=True)
            got[kind] = run_inproc(kind, path, cfg)
        reps.append([got[kind] for kind, _ in engines])
    inproc = merge_reps(reps)
    ref_check: dict[str, Any] = next((r["check"] for r in inproc if r["kind"] == default and "check" in r), {})
    agr = {r["kind"]: agreement(ref_check, r["check"]) for r in inproc if "check" in r and r["kind"] != default}
    http: dict[str, Any] | None = None
    notes = [
        "sentence-transformers has no early exit: peers are compared at the full depth (layer 6); dim 64 is "
        "`truncate_dim=64` (ST) and `dimensions=64` (Infinity), the same compute as dim 384.",
    ]
    if infinity:
        print("peers: Infinity over HTTP", flush=True)
        try:
            http = run_http(model_dir, infinity_dir, cfg, served_cfg, served_payload)
            agr["infinity"] = agreement(ref_check, http.pop("check"))
        except Exception as e:  # record why the peer could not be measured, keep the rest
            http = {"error": f"{type(e).__name__}: {e}".splitlines()[0], "traceback": traceback.format_exc()[-4000:]}
        log = TMP_DIR / "infinity-server.log"
        if log.is_file() and "Optimization failed" in log.read_text():
            notes.append("Infinity 0.0.78 tried to optimise the ONNX graph at start and logged `Optimization failed "
                         "with OptimizationConfig.__init__() got an unexpected keyword argument "
                         "'optimize_with_onnxruntime_only'` (optimum 2.1): it serves the unoptimised Optimum export.")
    payload = {"env": env, "peers_venv": peers_versions(), "load_at_start": load, "config": cfg.__dict__,
               "served_config": served_cfg.__dict__, "inproc": inproc, "agreement": agr, "http": http, "notes": notes,
               "infinity_version": (peers_versions() or {}).get("infinity-emb"), "default_precision": default_precision}
    out = results_dir or RESULTS_DIR
    write_results("peers", payload, markdown(payload), out)
    plot(payload, out / "peers.png")
    return payload


def quick_config() -> PeersConfig:
    return PeersConfig(lengths=(16,), batch=8, seconds=0.05, min_iters=1, reps=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--skip-infinity", action="store_true")
    ap.add_argument("--no-int8", action="store_true")
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(inproc_worker(json.loads(args.worker))))
        return
    from bench.served import quick_config as served_quick

    cfg = quick_config() if args.quick else PeersConfig()
    served_cfg = served_quick() if args.quick else ServedConfig()
    int8 = None
    if not args.no_int8:
        from bench.prepare import ensure_precision

        int8 = ensure_precision(args.model, "int8")
    served_path = RESULTS_DIR / "served.json"
    served_payload = json.loads(served_path.read_text()) if served_path.is_file() else None
    payload = run(args.model, int8, cfg, served_cfg, served_payload, infinity=not args.skip_infinity)
    print(markdown(payload))


if __name__ == "__main__":
    main()
