"""Reduced-precision copies: int8 stays close to fp32 at every budget and is still served."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from mipic.modeldir.manifest import load_manifest
from mipic.modeldir.runner import LoadedModel, Row
from mipic.training.export import convert_precision


def test_int8_copy_reports_quality_per_budget_and_serves(tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "int8"
    manifest = convert_precision(tiny_model_dir, out, "int8")
    assert manifest.precision == "int8"
    assert set(manifest.parity) == {f"cos_d{d}_l{ly}" for d in manifest.dims for ly in manifest.layers}
    worst = min(manifest.parity.values())
    assert 0.9 < worst < 1.0  # quantization changes something, but not much
    assert manifest.golden_min_cosine < worst
    graph = onnx.load(str(out / "layer_01.onnx")).graph
    assert any(n.op_type in ("MatMulInteger", "DynamicQuantizeLinear") for n in graph.node)
    model = LoadedModel(out, provider="cpu")
    assert model.verify_golden() >= manifest.golden_min_cosine
    ref = LoadedModel(tiny_model_dir, provider="cpu")
    ids = ref.tokenizer.encode(["the quick brown fox"])[0].ids
    a = ref.run([Row(ids=ids, dim=16, layer=3)])[0]
    b = model.run([Row(ids=ids, dim=16, layer=3)])[0]
    assert float(a @ b) > 0.9 and not np.allclose(a, b, atol=1e-6)
    assert load_manifest(out).files  # checksummed like any export


def test_fp16_copy_has_half_precision_weights(tiny_model_dir: Path, tmp_path: Path) -> None:
    manifest = convert_precision(tiny_model_dir, tmp_path / "fp16", "fp16")
    assert manifest.precision == "fp16"
    graph = onnx.load(str(tmp_path / "fp16" / "layer_02.onnx")).graph
    assert {i.data_type for i in graph.initializer} >= {onnx.TensorProto.FLOAT16}
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
