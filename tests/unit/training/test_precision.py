"""Reduced-precision copies: static int8 stays close to fp32 at every budget, does not depend on batch-mates,
and is still served; dynamic int8 and fp16 for comparison."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from mipic.modeldir.manifest import load_manifest
from mipic.modeldir.runner import LoadedModel, Row
from mipic.training.precision import convert_precision

WORDS = "the quick brown fox jumps over the lazy dog a cat is not a dog and that is it for the model".split()
# Calibration texts in the tiny model's vocabulary, of many lengths (the real default: training-split sentences).
CALIBRATION = [" ".join(WORDS[i % 7: i % 7 + 3 + i % 11]) for i in range(48)]
SAME_LENGTH = ["the quick brown fox jumps", "a cat is not a", "the lazy dog and that", "for the model is it"]


@pytest.fixture(scope="module")
def static_int8(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("static") / "int8"
    convert_precision(tiny_model_dir, out, "int8", texts=CALIBRATION)
    return out


def test_static_int8_reports_quality_per_budget_and_serves(tiny_model_dir: Path, static_int8: Path) -> None:
    manifest = load_manifest(static_int8)
    assert manifest.precision == "int8" and manifest.source["precision"].startswith("static int8")
    assert set(manifest.parity) == {f"cos_d{d}_l{ly}" for d in manifest.dims for ly in manifest.layers}
    worst = min(manifest.parity.values())
    assert 0.95 < worst < 1.0  # quantization changes something, but not much
    assert manifest.golden_min_cosine < worst
    graph = onnx.load(str(static_int8 / "layer_01.onnx")).graph
    ops = [n.op_type for n in graph.node]
    # fixed scales (QuantizeLinear with constant scale), no per-batch DynamicQuantizeLinear
    assert "QuantizeLinear" in ops and "DynamicQuantizeLinear" not in ops
    assert ops.count("MatMul") >= 3  # the attention products and the feed-forward down-projection stay fp32
    model = LoadedModel(static_int8, provider="cpu")
    assert model.verify_golden() >= manifest.golden_min_cosine
    ref = LoadedModel(tiny_model_dir, provider="cpu")
    ids = ref.tokenizer.encode(["the quick brown fox"])[0].ids
    a = ref.run([Row(ids=ids, dim=16, layer=3)])[0]
    b = model.run([Row(ids=ids, dim=16, layer=3)])[0]
    assert float(a @ b) > 0.95 and not np.allclose(a, b, atol=1e-6)
    assert load_manifest(static_int8).files  # checksummed like any export


def _alone_and_mixed(model: LoadedModel, texts: list[str]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    ids = [e.ids for e in model.tokenizer.encode(texts)]
    alone = [model.run([Row(ids=i, dim=32, layer=3)])[0] for i in ids]
    budgets = [(32, 3), (8, 1), (16, 2), (32, 3)]
    mixed = model.run([Row(ids=i, dim=d, layer=ly) for i, (d, ly) in zip(ids, budgets, strict=True)])
    return alone, mixed


def test_static_int8_vector_does_not_depend_on_batch_mates(static_int8: Path) -> None:
    """The same text alone and in a mixed batch (other texts, other budgets) gives the same int8 vector bit
    for bit: activation scales are fixed at export, not taken from the batch."""
    model = LoadedModel(static_int8, provider="cpu")
    lengths = {e.length for e in model.tokenizer.encode(SAME_LENGTH)}
    assert len(lengths) == 1  # same padded width alone and together: nothing but the batch-mates changes
    alone, mixed = _alone_and_mixed(model, SAME_LENGTH)
    for i in (0, 3):  # the rows whose budget is (32, 3), as alone
        np.testing.assert_array_equal(alone[i], mixed[i])


def test_dynamic_int8_vector_depends_on_batch_mates(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Why static: with per-batch activation scales the same text changes with its batch-mates."""
    manifest = convert_precision(tiny_model_dir, tmp_path / "dyn", "int8-dynamic")
    assert manifest.precision == "int8" and manifest.source["precision"].startswith("dynamic int8")
    graph = onnx.load(str(tmp_path / "dyn" / "layer_01.onnx")).graph
    assert any(n.op_type in ("MatMulInteger", "DynamicQuantizeLinear") for n in graph.node)
    model = LoadedModel(tmp_path / "dyn", provider="cpu")
    alone, mixed = _alone_and_mixed(model, SAME_LENGTH)
    assert not all(np.array_equal(alone[i], mixed[i]) for i in (0, 3))


def test_static_int8_needs_calibration_texts(tiny_model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="calibration texts"):
        convert_precision(tiny_model_dir, tmp_path / "x", "int8", texts=[])
    with pytest.raises(ValueError, match="precision must be one of int8, int8-dynamic, fp16, not 'int4'"):
        convert_precision(tiny_model_dir, tmp_path / "y", "int4")


def test_fp16_copy_has_half_precision_weights(tiny_model_dir: Path, tmp_path: Path) -> None:
    manifest = convert_precision(tiny_model_dir, tmp_path / "fp16", "fp16")
    assert manifest.precision == "fp16"
    assert min(manifest.parity.values()) > 0.999  # measured on CPU like the other precisions
    graph = onnx.load(str(tmp_path / "fp16" / "layer_02.onnx")).graph
    assert {i.data_type for i in graph.initializer} >= {onnx.TensorProto.FLOAT16}
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16


def test_static_int8_padding_changes_a_vector_by_rounding_only(static_int8: Path) -> None:
    """Batch-mates of other lengths pad a row wider; that reorders a few fp32 sums (softmax), nothing more."""
    model = LoadedModel(static_int8, provider="cpu")
    texts = ["a cat", "the quick brown fox jumps over the lazy dog", "the dog", "a cat is not a dog and that is it"]
    ids = [e.ids for e in model.tokenizer.encode(texts)]
    alone = [model.run([Row(ids=i, dim=32, layer=3)])[0] for i in ids]
    mixed = model.run([Row(ids=i, dim=32, layer=3) for i in ids])
    for a, b in zip(alone, mixed, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
