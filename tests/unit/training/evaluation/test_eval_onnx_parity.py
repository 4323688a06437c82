"""The grid scores an ONNX export through the serving engine and agrees with the PyTorch checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mipic.training.evaluation.command import load_encoder
from mipic.training.evaluation.encoders import TorchBudgetEncoder
from mipic.training.evaluation.onnx_encoder import OnnxBudgetEncoder

TEXTS = ["the quick brown fox", "a cat", "the lazy dog is not a cat", "embed this text", "the model"]


def test_onnx_and_torch_encoders_agree(tiny_torch_model, tiny_model_dir: Path) -> None:  # type: ignore[no-untyped-def]
    _, _, ckpt = tiny_torch_model
    onnx_enc = load_encoder(tiny_model_dir)
    assert isinstance(onnx_enc, OnnxBudgetEncoder)
    torch_enc = TorchBudgetEncoder(ckpt, max_length=64)
    for layer in (1, 3):
        for dim in (8, 32):
            np.testing.assert_allclose(onnx_enc.encode(TEXTS, layer, dim), torch_enc.encode(TEXTS, layer, dim),
                                       atol=2e-5)
    full = onnx_enc.encode_all_layers(TEXTS)
    assert full.shape == (3, len(TEXTS), 32)
    v = full[1, :, :8]
    np.testing.assert_allclose(v / np.linalg.norm(v, axis=1, keepdims=True), onnx_enc.encode(TEXTS, 2, 8),
                               atol=2e-5)
