"""Precision by measurement: every precision the CPU can run, scored on every built-in suite at every budget and
timed on the engine, same machine and run; the CPU default is the fastest whose quality stays within
``TOLERANCE`` of fp32 everywhere.

Variants (built untimed by ``bench.prepare``, from the fp32 model): ``int8`` (static: SmoothQuant +
``quantize_static``, calibrated on training-split fitting texts; what ``mipic export --quantize int8`` writes),
``int8-dynamic`` (``quantize_dynamic``, for comparison: its vectors depend on their batch-mates), ``fp16``.
``bf16`` is probed: onnxruntime's CPU provider must run a bf16 MatMul, else it is reported as unsupported.
Quality: the served read-out (exit heads) through the same runner, ``max_items`` items per suite, the
suites' main metrics; "drop" = fp32 score − variant score, per (suite, layer, dim). A control row adds
isotropic noise to fp32's pooled states (cosine ``NOISE_COSINE`` to the original): what the suites call a
difference when vectors barely move. Each variant runs in its own child process.
Usage: ``python -m bench.precision [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
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
from bench.ratios import Spread, merge_runs, rotated

TOLERANCE = 0.005
NOISE_COSINE = 0.999
NOISE = "fp32+noise"


@dataclass(frozen=True)
class PrecisionConfig:
    max_items: int = 300
    speed_points: tuple[tuple[int, int, int, int], ...] = (  # (tokens, batch, dim, layer)
        (16, 128, 384, 6), (256, 32, 384, 6), (16, 128, 64, 1))
    speed_seconds: float = 1.0
    speed_reps: int = 5  # speed repetitions, variants interleaved in rotated order; speedups are taken rep by rep
    noise_control: bool = True


# --------------------------------------------------------------------------- child-process workers


class NoisyEncoder:
    """An ``AllLayersEncoder`` whose pooled states get isotropic noise at a fixed expected cosine."""

    def __init__(self, base: Any, cosine: float, seed: int = 0) -> None:
        self.base, self.cosine, self.seed = base, cosine, seed
        self.num_layers, self.hidden_size = base.num_layers, base.hidden_size
        self.dims, self.heads = base.dims, base.heads

    def encode(self, texts: Sequence[str], layer: int, dim: int) -> np.ndarray:
        raise NotImplementedError("scored through encode_all_layers")

    def encode_all_layers(self, texts: Sequence[str]) -> np.ndarray:
        x = self.base.encode_all_layers(texts)  # (L, N, H)
        sigma = float(np.sqrt(1.0 / self.cosine**2 - 1.0))  # cos(x, x + e) ≈ 1/√(1+σ²) for |e| = σ|x|
        noise = np.random.default_rng(self.seed).standard_normal(x.shape).astype(np.float32)
        scale = np.linalg.norm(x, axis=-1, keepdims=True) * sigma / np.sqrt(x.shape[-1])
        return np.asarray(x + noise * scale, dtype=np.float32)


def quality_worker(spec: dict[str, Any]) -> dict[str, Any]:
    from mipic.training.evaluation.onnx_encoder import OnnxBudgetEncoder
    from mipic.training.evaluation.suites import collect_suites
    from mipic.training.evaluation.variants import compare_variants

    suites = collect_suites(builtin=True, max_items=spec["max_items"])
    encoder: Any = OnnxBudgetEncoder(Path(spec["dir"]))
    if spec.get("noise_cosine"):
        encoder = NoisyEncoder(encoder, float(spec["noise_cosine"]))
    result = compare_variants(encoder, suites, {"heads": encoder.heads}, geometry=False)["heads"]
    return {"layers": result.layers, "dims": result.dims, "scores": result.scores,
            "main_metrics": result.main_metrics, "n_texts": result.n_texts, "seconds": result.seconds}


def speed_worker(spec: dict[str, Any]) -> dict[str, Any]:
    from mipic.modeldir.runner import LoadedModel, Row

    model = LoadedModel(Path(spec["dir"]), provider="cpu", verify_checksums=False)
    points = []
    for tokens, batch, dim, layer in spec["points"]:
        ids = [e.ids for e in model.tokenizer.encode(make_texts(batch, tokens, seed=tokens))]
        rows = [Row(ids=i, dim=dim, layer=layer) for i in ids]
        times = time_calls(lambda rows=rows: model.run(rows), spec["seconds"], 2, warmup=1)
        points.append({"tokens": tokens, "batch": batch, "dim": dim, "layer": layer,
                       "texts_per_s": batch / float(np.mean(times))})
    return {"points": points, "provider": model.runtime.provider}


def bf16_supported() -> str | None:
    """None if onnxruntime's CPU provider runs a bf16 MatMul, else its error (one line)."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    inputs = [helper.make_tensor_value_info(n, TensorProto.BFLOAT16, [2, 2]) for n in ("a", "b")]
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["y"])], "bf16", inputs,
                              [helper.make_tensor_value_info("y", TensorProto.BFLOAT16, [2, 2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)  # a valid graph: a failure below is the provider's, not the model's
    try:
        ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        return str(exc).strip().splitlines()[0][:200]
    return None


def _child(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-m", "bench.precision", "--worker", kind, json.dumps(spec)],
                          capture_output=True, text=True, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"error": (proc.stderr.strip().splitlines() or ["(no output)"])[-1][:300]}
    return dict(json.loads(lines[-1]))


# --------------------------------------------------------------------------- analysis


def drops(reference: dict[str, Any], other: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per suite: the worst drop (fp32 − other) of its main metric over every (layer, dim), and where."""
    out: dict[str, dict[str, Any]] = {}
    for suite, metric in reference["main_metrics"].items():
        a = np.asarray(reference["scores"][suite][metric], dtype=np.float64)  # (layers, dims)
        b = np.asarray(other["scores"][suite][metric], dtype=np.float64)
        d = a - b
        i, j = np.unravel_index(int(np.nanargmax(d)), d.shape)
        out[suite] = {"metric": metric, "worst_drop": float(d[i, j]), "layer": reference["layers"][i],
                      "dim": reference["dims"][j], "mean_abs_diff": float(np.nanmean(np.abs(d))),
                      "budgets_over": int((d > TOLERANCE).sum()), "budgets": int(d.size)}
    return out


def choose_default(variants: dict[str, dict[str, Any]]) -> str:
    """The fastest variant (median over reps of the geometric mean of its speed points over fp32's) whose quality
    holds and that is faster than fp32 at the lower end of its spread (``speedup_low`` > 1); fp32 if none."""
    ok = [name for name, v in variants.items() if v.get("quality_ok") and "speedup" in v
          and (name == "fp32" or v.get("speedup_low", v["speedup"]) > 1.0)]
    return max(ok, key=lambda n: variants[n]["speedup"], default="fp32")


def speedups(ref_reps: list[list[float]], reps: list[list[float]]) -> Spread:
    """Per rep, the geometric mean over points of texts/s ÷ fp32's in the same rep; their median and range."""
    return Spread(tuple(float(np.exp(np.mean(np.log(np.asarray(v) / np.asarray(r)))))
                        for r, v in zip(ref_reps, reps, strict=True)))


def run(model_dir: Path, copies: dict[str, Path], cfg: PrecisionConfig, results_dir: Path | None = None
        ) -> dict[str, Any]:
    load = load_snapshot()
    dirs = {"fp32": model_dir, **copies}
    variants: dict[str, dict[str, Any]] = {}
    for name, path in dirs.items():
        print(f"precision: {name} quality ({cfg.max_items} items per suite)", flush=True)
        quality = _child("quality", {"dir": str(path), "max_items": cfg.max_items})
        variants[name] = {"dir": str(path), "quality": quality}
    names = list(dirs)
    speed_reps: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for rep in range(max(1, cfg.speed_reps)):
        for name in rotated(names, rep):  # no variant always first
            print(f"precision: {name} speed (rep {rep + 1}/{cfg.speed_reps})", flush=True)
            spec = {"dir": str(dirs[name]), "points": [list(p) for p in cfg.speed_points], "seconds": cfg.speed_seconds}
            speed_reps[name].append(_child("speed", spec))
    for name in names:
        variants[name]["speed"] = merge_runs(speed_reps[name])
    if cfg.noise_control:
        print(f"precision: fp32 + noise at cosine {NOISE_COSINE} (control)", flush=True)
        variants[NOISE] = {"dir": str(model_dir), "quality": _child(
            "quality", {"dir": str(model_dir), "max_items": cfg.max_items, "noise_cosine": NOISE_COSINE})}
    bf16 = bf16_supported()
    ref = variants["fp32"]
    for v in variants.values():
        if "scores" in v["quality"] and "scores" in ref["quality"]:
            v["drops"] = drops(ref["quality"], v["quality"])
            v["quality_ok"] = all(d["worst_drop"] <= TOLERANCE for d in v["drops"].values())
        if "points" in v.get("speed", {}) and "points" in ref.get("speed", {}):
            by_rep = [list(x) for x in zip(*(p["texts_per_s_reps"] for p in v["speed"]["points"]), strict=True)]
            ref_by_rep = [list(x) for x in zip(*(p["texts_per_s_reps"] for p in ref["speed"]["points"]), strict=True)]
            spread = speedups(ref_by_rep, by_rep)
            v["speedup"], v["speedup_low"], v["speedup_high"] = spread.median, spread.low, spread.high
    payload = {"env": environment(), "load_at_start": load, "config": cfg.__dict__, "tolerance": TOLERANCE,
               "noise_cosine": NOISE_COSINE, "variants": variants,
               "bf16": {"supported": bf16 is None, "error": bf16},
               "default_cpu_precision": choose_default({k: v for k, v in variants.items() if k != NOISE})}
    write_results("precision", payload, markdown(payload), results_dir or RESULTS_DIR)
    return payload


def markdown(payload: dict[str, Any]) -> str:
    env, variants = payload["env"], payload["variants"]
    ref = variants["fp32"]
    suites = list(ref["quality"].get("main_metrics", {}))
    speed_keys = [(p["tokens"], p["batch"], p["dim"], p["layer"]) for p in ref.get("speed", {}).get("points", [])]
    rows = []
    for name, v in variants.items():
        if "error" in v["quality"]:
            rows.append([name, f"failed: {v['quality']['error']}"])
            continue
        d = v.get("drops", {})
        sp = {(p["tokens"], p["batch"], p["dim"], p["layer"]): p["texts_per_s"]
              for p in v.get("speed", {}).get("points", [])}
        rows.append([name, *(f"{d[s]['worst_drop']:+.4f} (l{d[s]['layer']}/d{d[s]['dim']}; "
                             f"{d[s]['budgets_over']}/{d[s]['budgets']})" if s in d else "" for s in suites),
                     *(sp.get(k, "") for k in speed_keys),
                     f"{v['speedup']:.2f}× ({v['speedup_low']:.2f}–{v['speedup_high']:.2f})" if "speedup" in v else "",
                     "" if name == "fp32" else ("yes" if v.get("quality_ok") else "no")])
    headers = ["precision", *(f"{s} worst drop (where; budgets > {TOLERANCE})" for s in suites),
               *(f"~{t} tok B={b} d{d}/l{ly} texts/s" for t, b, d, ly in speed_keys),
               "speed vs fp32 (median of reps; min–max)",
               f"quality within {TOLERANCE}"]
    bf16 = payload["bf16"]
    notes = [f"- bf16: {'runs' if bf16['supported'] else 'not run: ' + str(bf16['error'])}.",
             f"- `{NOISE}` is a control, not a precision: fp32's pooled states plus isotropic noise at cosine "
             f"{payload['noise_cosine']} (no speed). Its drops are what the suites report for vectors that barely "
             "move.",
             f"- Speed: texts/s the median of {payload['config'].get('speed_reps', 1)} repetitions, variants "
             "interleaved in rotated order; the speedup is the geometric mean over the points of the ratio to fp32 "
             "in the same rep, median (min–max) over reps. A variant counts as faster only when the lower end is "
             "above 1.",
             f"- CPU default by this rule: **{payload['default_cpu_precision']}**."]
    for name, v in variants.items():
        if "error" in v.get("speed", {}):
            notes.append(f"- {name} speed failed: `{v['speed']['error']}`")
    return (f"Quality on every built-in suite ({payload['config']['max_items']} items each, served read-out) at every "
            f"(layer, dim), as the worst drop of the main metric against fp32 (positive = worse), and engine speed. "
            f"{env_line(env)}. Load average at start: {payload['load_at_start']['loadavg'][0]:.2f}.\n\n"
            + md_table(headers, rows) + "\n" + "\n".join(notes) + "\n")


def quick_config() -> PrecisionConfig:
    return PrecisionConfig(max_items=40, speed_points=((16, 32, 384, 6),), speed_seconds=0.2, speed_reps=1,
                           noise_control=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--max-items", type=int, default=PrecisionConfig.max_items,
                    help="items per built-in suite (the noise floor of a drop shrinks as 1/sqrt(items))")
    args = ap.parse_args()
    if args.worker:
        kind, spec = args.worker
        print(json.dumps((quality_worker if kind == "quality" else speed_worker)(json.loads(spec))))
        return
    from bench.prepare import ensure_precisions

    cfg = quick_config() if args.quick else PrecisionConfig(max_items=args.max_items)
    print(markdown(run(args.model, ensure_precisions(args.model), cfg)))


if __name__ == "__main__":
    main()
