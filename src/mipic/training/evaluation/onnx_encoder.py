"""Evaluate an exported model through the serving engine's runner, so the grid measures what is served."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mipic.service.engine.model import LoadedModel, Row


class OnnxBudgetEncoder:
    """:class:`BudgetEncoder` over a staged ONNX model directory (CPU)."""

    def __init__(self, model_dir: Path, max_length: int = 128, batch_size: int = 32) -> None:
        self.model = LoadedModel(model_dir, provider="cpu", max_seq_length=max_length)
        self.batch_size = batch_size
        self.num_layers = self.model.manifest.num_layers
        self.hidden_size = self.model.manifest.hidden_size
        self.dims = list(self.model.manifest.dims)

    def _ids(self, texts: Sequence[str]) -> list[np.ndarray]:
        return [e.ids for e in self.model.tokenizer.encode(list(texts))]

    def encode(self, texts: Sequence[str], layer: int, dim: int) -> np.ndarray:
        ids = self._ids(texts)
        out: list[np.ndarray] = []
        for start in range(0, len(ids), self.batch_size):
            chunk = ids[start : start + self.batch_size]
            out += self.model.run([Row(ids=i, dim=dim, layer=layer) for i in chunk])
        return np.stack(out)

    def encode_all_layers(self, texts: Sequence[str]) -> np.ndarray:
        ids = self._ids(texts)
        # sort by length so each batch pads little; restore the order afterwards
        order = sorted(range(len(ids)), key=lambda i: ids[i].shape[0])
        out = np.empty((self.num_layers, len(ids), self.hidden_size), dtype=np.float32)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start:start + self.batch_size]
            out[:, chunk] = self.model.pool_all_layers([ids[i] for i in chunk])
        return out
