"""Reduced-precision copies of an exported model directory: static int8 (SmoothQuant, calibrated), dynamic
int8 and fp16, each with its quality per (layer, dim) measured against the fp32 source.

Works on the exported ONNX graphs alone (onnx + onnxruntime's quantizers): no torch, no Optimum.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mipic.modeldir.manifest import GOLDEN_FILE, MANIFEST_FILE, Manifest, budget_key, load_manifest, write_manifest
from mipic.modeldir.runner import LoadedModel, Row

logger = logging.getLogger(__name__)

PRECISIONS = ("int8", "int8-dynamic", "fp16")
# Static int8 is calibrated on this many training-split fitting texts (sentences and passages, 3:1).
CALIBRATION_TEXTS = 256
# SmoothQuant's migration strength: how much of an input channel's range moves into the weights.
SMOOTH_ALPHA = 0.5


def calibration_texts(n: int = CALIBRATION_TEXTS, seed: int = 0) -> list[str]:
    """``n`` training-split texts from the exit heads' fitting set (never an eval-split text)."""
    from mipic.training.heads import fitting_texts
    from mipic.training.heads_config import HeadFitConfig

    passages = n // 4
    return fitting_texts(HeadFitConfig(sentences=max(16, n - passages), passages=passages, seed=seed))[:n]


def _weight_matmuls(model: Any, hidden_size: int) -> tuple[list[Any], list[Any]]:
    """The MatMul nodes of a layer graph with a constant (K, N) weight, split into (quantized, kept fp32).

    Kept in fp32: the feed-forward down-projection (K > hidden size), whose input is the GELU output: a
    few channels reach 25 where the median is 0.1, so one static scale per tensor leaves the rest with one
    or two levels, even after smoothing (worst cosine to fp32 0.96 instead of 0.998 at layer 6).
    """
    weights = {i.name: tuple(i.dims) for i in model.graph.initializer}
    matmuls = [n for n in model.graph.node if n.op_type == "MatMul" and len(weights.get(n.input[1], ())) == 2]
    quantized = [n for n in matmuls if weights[n.input[1]][0] <= hidden_size]
    return quantized, [n for n in matmuls if n not in quantized]


def _input_channel_max(
    model: Any, tensors: Sequence[str], feeds: Sequence[dict[str, np.ndarray]]
) -> dict[str, np.ndarray]:
    """max |x| per channel (last axis) of each named tensor over the real tokens of every feed."""
    import onnx
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    for name in tensors:
        probe.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(probe.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    out: dict[str, np.ndarray] = {}
    for feed in feeds:
        values = dict(zip(names, session.run(None, feed), strict=True))
        real = feed["attention_mask"].astype(bool)  # (B, T)
        for name in tensors:
            amax = np.abs(values[name][real]).max(axis=0)  # (K,)
            out[name] = np.maximum(out.get(name, amax), amax)
    return out


def _smooth(model: Any, matmuls: Sequence[Any], feeds: Sequence[dict[str, np.ndarray]], alpha: float) -> None:
    """SmoothQuant (Xiao et al., 2023): for ``x @ W`` use ``(x / s) @ (diag(s) W)`` with
    ``s_j = max|x_j|^alpha / max|W_j|^(1 - alpha)``, so an activation channel with outliers hands part of
    its range to its weight row, which is quantized per output channel anyway. One ``Mul`` by ``1 / s``
    per distinct input tensor (Q, K and V share theirs, so their weights share ``s``)."""
    from onnx import helper, numpy_helper

    weights = {i.name: i for i in model.graph.initializer}
    by_input: dict[str, list[Any]] = {}
    for node in matmuls:
        by_input.setdefault(node.input[0], []).append(node)
    amax = _input_channel_max(model, list(by_input), feeds)
    muls = {}
    for k, (x, nodes) in enumerate(by_input.items()):
        w_max = np.max([np.abs(numpy_helper.to_array(weights[n.input[1]])).max(axis=1) for n in nodes], axis=0)
        s = (np.maximum(amax[x], 1e-5) ** alpha / np.maximum(w_max, 1e-5) ** (1 - alpha)).astype(np.float32)
        for n in nodes:
            w = numpy_helper.to_array(weights[n.input[1]])
            weights[n.input[1]].CopyFrom(numpy_helper.from_array((w * s[:, None]).astype(np.float32), n.input[1]))
            n.input[0] = f"smooth_{k}_out"
        model.graph.initializer.append(numpy_helper.from_array((1.0 / s).astype(np.float32), f"smooth_{k}_scale"))
        muls[x] = helper.make_node("Mul", [x, f"smooth_{k}_scale"], [f"smooth_{k}_out"], name=f"smooth_{k}")
    # each Mul right before the first node that reads its output (the graph stays topologically sorted)
    nodes = list(model.graph.node)
    del model.graph.node[:]
    placed: set[str] = set()
    for node in nodes:
        for x, mul in muls.items():
            if x not in placed and mul.output[0] in node.input:
                model.graph.node.append(mul)
                placed.add(x)
        model.graph.node.append(node)


class _NoPreprocessAdvice(logging.Filter):
    """onnxruntime's quantizers advise "pre-processing" (shape inference) on the root logger for every graph;
    the staged graphs are already shaped and optimised by the exporter."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing" not in record.getMessage()


class _Feeds:
    """onnxruntime's ``CalibrationDataReader``: one prepared feed per call, then ``None``."""

    def __init__(self, feeds: Sequence[dict[str, np.ndarray]]) -> None:
        self._it = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)


def _quantize_static(src: Path, out: Path, source: Manifest, texts: Sequence[str]) -> str:
    """Static int8 for every encoder layer of ``out`` (a copy of ``src``), in order, each calibrated on the
    states the already quantized layers before it produce. Returns a one-line description."""
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if not texts:
        raise ValueError("static int8 needs calibration texts")
    ref = LoadedModel(src, provider="cpu")
    # One text per feed: padded positions never enter a range (they reach larger values than real tokens).
    ids = [e.ids[None, :] for e in ref.tokenizer.encode(list(texts))]  # (1, T) each
    masks = [np.ones_like(i) for i in ids]
    states = [ref.runtime.embed(i) for i in ids]
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    kept = 0
    for stage in source.stages:
        if stage.kind == "embeddings":
            continue  # a lookup and a LayerNorm: cheap, and stays exact
        path = out / stage.path
        feeds = [{"hidden_states": st, "attention_mask": m} for st, m in zip(states, masks, strict=True)]
        model = onnx.load(str(path))
        quantized, fp32 = _weight_matmuls(model, source.hidden_size)
        kept = len(fp32)
        _smooth(model, quantized, feeds, SMOOTH_ALPHA)
        smoothed = path.with_suffix(".smooth.onnx")
        onnx.save(model, str(smoothed))
        tmp = path.with_suffix(".int8.onnx")
        # QDQ, u8 activations and s8 weights per output channel (onnxruntime's advice for x86 with or without
        # VNNI); only the weight MatMuls' inputs: outputs, attention scores and probabilities stay fp32.
        quantize_static(
            str(smoothed), str(tmp), _Feeds(feeds), quant_format=QuantFormat.QDQ,
            nodes_to_quantize=[n.name for n in quantized], per_channel=True, reduce_range=False,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
            extra_options={"MatMulConstBOnly": True, "OpTypesToExcludeOutputQuantization": ["MatMul"],
                           "QDQOpTypePerChannelSupportToAxis": {"MatMul": 1}},
        )
        smoothed.unlink()
        tmp.replace(path)
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        states = [session.run(None, f)[0] for f in feeds]
    ref.close()
    return (f"static int8: QDQ, SmoothQuant alpha {SMOOTH_ALPHA}, u8 activations (MinMax over {len(texts)} "
            f"training-split fitting texts, one per batch), s8 weights per output channel; {kept} feed-forward "
            "down-projection per layer kept fp32")


def convert_precision(src: Path, out: Path, precision: str, version: str | None = None,
                      texts: Sequence[str] | None = None) -> Manifest:
    """Write a reduced-precision copy of an exported model directory and report what it costs.

    ``int8``: static quantization (onnxruntime ``quantize_static``) of the encoder layers' weight MatMuls,
    calibrated on ``texts`` (default: :func:`calibration_texts`, the heads' training-split fitting set).
    Scales are fixed, so a text's vector does not depend on its batch-mates. See :func:`_quantize_static`.
    ``int8-dynamic``: ``quantize_dynamic`` (per-batch activation scales: vectors depend on batch-mates; kept
    for comparison). The embedding block stays fp32 (a lookup, cheap and sensitive).
    ``fp16``: every stage converted to float16 (meant for the CUDA provider; onnxruntime's CPU provider runs it,
    measured slower than fp32 on AVX-512 without AVX512-FP16, bench/results/precision.md).
    The quality change per (layer, dim) is measured against the fp32 source as the worst cosine between the
    two models' vectors on the golden texts and stored in the manifest (``parity["cos_d{dim}_l{layer}"]``);
    ``golden_min_cosine`` is set just below the worst of them so that a server still verifies the copy.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    quiet = _NoPreprocessAdvice()
    logging.getLogger().addFilter(quiet)
    try:
        return _convert_precision(src, Path(out), precision, version, texts)
    finally:
        logging.getLogger().removeFilter(quiet)


def _convert_precision(src: Path, out: Path, precision: str, version: str | None,
                       texts: Sequence[str] | None) -> Manifest:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    source = load_manifest(src)
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(src, out)
    (out / MANIFEST_FILE).unlink()
    how = {"fp16": "fp16: every stage converted (onnxruntime.transformers.float16)",
           "int8-dynamic": "dynamic int8: quantize_dynamic, s8 weights per output channel, per-batch activation "
                           "scales"}.get(precision, "")
    if precision == "int8":
        how = _quantize_static(src, out, source, list(texts) if texts is not None else calibration_texts())
    for stage in source.stages:
        path = out / stage.path
        if precision == "int8-dynamic" and stage.kind != "embeddings":
            tmp = path.with_suffix(".int8.onnx")
            quantize_dynamic(str(path), str(tmp), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"],
                             per_channel=True)
            tmp.replace(path)
        elif precision == "fp16":
            import onnx
            from onnxruntime.transformers.float16 import convert_float_to_float16

            model = convert_float_to_float16(onnx.load(str(path)), keep_io_types=False)
            onnx.save(model, str(path))
    draft = source.model_copy(update={
        "precision": "int8" if precision.startswith("int8") else precision, "version": version or source.version,
        "golden_min_cosine": 0.5, "source": {**source.source, "precision": how},
    })
    write_manifest(out, draft)
    report: dict[str, float] = {}  # onnxruntime's CPU provider runs every precision written here
    ref, low = LoadedModel(src, provider="cpu"), LoadedModel(out, provider="cpu")
    golden = json.loads((src / GOLDEN_FILE).read_text())
    ids = [e.ids for e in ref.tokenizer.encode(list(golden["texts"]))]
    for layer in source.layers:
        for dim in source.dims:
            rows = [Row(ids=i, dim=dim, layer=layer) for i in ids]
            cos = [float(a @ b) for a, b in zip(ref.run(rows), low.run(rows), strict=True)]
            report[f"cos_{budget_key(dim, layer)}"] = min(cos)
    # The server's check runs every budget in one mixed batch; dynamic int8 quantizes activations per batch,
    # so its vectors depend on their batch-mates. Set the threshold from that same mixed-batch check, with a
    # margin.
    worst_mixed = LoadedModel(out, provider="cpu").verify_golden()
    worst = min([*report.values(), worst_mixed])
    final = draft.model_copy(update={"parity": report, "golden_min_cosine": max(0.5, round(worst - 0.01, 4))})
    manifest = write_manifest(out, final)
    logger.info("wrote %s copy of %s to %s (worst cosine vs fp32 %.4f)", precision, source.model_id, out, worst)
    return manifest
