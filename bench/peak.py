"""The machine's fp32 compute ceiling: GEMM FLOP/s with numpy (BLAS) and with an onnxruntime MatMul graph.

The ceiling is measured on the shapes that dominate an encoder layer — (B·T, H) @ (H, I) — and on a square
GEMM, with every core, in the same run as the engine numbers, so "fraction of peak" compares like with
like. Usage: ``python -m bench.peak [--seconds S]``.
"""

from __future__ import annotations

import argparse
import functools
from typing import Any

import numpy as np

from bench.common import env_line, environment, load_snapshot, md_table, time_calls, write_results

# (M, K, N): tokens × hidden @ hidden × intermediate (MiniLM feed-forward), its transpose, and a square one.
SHAPES: list[tuple[int, int, int]] = [(4096, 384, 1536), (4096, 1536, 384), (2048, 2048, 2048)]


def _ort_matmul_session(k: int, n: int, threads: int) -> Any:
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((k, n), dtype=np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "gemm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["m", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["m", n])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def measure_peak(seconds: float = 1.0, threads: int = 0) -> dict[str, Any]:
    """Best GFLOP/s per backend and shape; ``peak_gflops`` is the best of all."""
    rng = np.random.default_rng(0)
    rows: list[dict[str, Any]] = []
    for m, k, n in SHAPES:
        a = rng.standard_normal((m, k), dtype=np.float32)
        b = rng.standard_normal((k, n), dtype=np.float32)
        flops = 2.0 * m * k * n
        t_np = time_calls(functools.partial(np.matmul, a, b), seconds, min_iters=3, warmup=1)
        rows.append({"backend": "numpy", "m": m, "k": k, "n": n, "gflops": flops / min(t_np) / 1e9,
                     "median_gflops": flops / float(np.median(t_np)) / 1e9})
        sess = _ort_matmul_session(k, n, threads)
        feeds = {"x": a}
        t_ort = time_calls(functools.partial(sess.run, None, feeds), seconds, min_iters=3, warmup=1)
        rows.append({"backend": "onnxruntime", "m": m, "k": k, "n": n, "gflops": flops / min(t_ort) / 1e9,
                     "median_gflops": flops / float(np.median(t_ort)) / 1e9})
    best = max(rows, key=lambda r: r["median_gflops"])
    # Median, not best-of: the engine numbers compared against it are means over many calls.
    return {"peak_gflops": best["median_gflops"], "peak_from": f"{best['backend']} {best['m']}x{best['k']}x{best['n']}",
            "measurements": rows}


def markdown(result: dict[str, Any], env: dict[str, Any], load: dict[str, Any]) -> str:
    rows = [[r["backend"], f"{r['m']}×{r['k']} @ {r['k']}×{r['n']}", r["median_gflops"], r["gflops"]]
            for r in result["measurements"]]
    return (f"fp32 GEMM ceiling, all cores. {env_line(env)}; load average {load['loadavg'][0]:.2f} at start.\n\n"
            + md_table(["backend", "shape", "GFLOP/s (median)", "GFLOP/s (best)"], rows)
            + f"\nPeak used for \"fraction of peak\": **{result['peak_gflops']:.1f} GFLOP/s** ({result['peak_from']}, "
              "median).\n")


def run(seconds: float = 1.0) -> dict[str, Any]:
    load = load_snapshot()
    env = environment()
    result = measure_peak(seconds)
    payload = {"env": env, "load_at_start": load, **result}
    write_results("peak", payload, markdown(result, env, load))
    return payload


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=1.0, help="time per backend and shape")
    args = ap.parse_args()
    payload = run(args.seconds)
    print(markdown(payload, payload["env"], payload["load_at_start"]))


if __name__ == "__main__":
    main()
