"""Evaluate an exported model through the serving runner's graphs, so the grid measures what is served."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from mipic.modeldir.heads import ExitHeads
from mipic.modeldir.runner import LoadedModel
from mipic.modeldir.vector import truncate_normalize


class OnnxBudgetEncoder:
    """:class:`AllLayersEncoder` over a staged ONNX model directory (CPU).

    ``encode_all_layers`` gives the pooled states before any exit head (plain read-out); ``heads`` are the
    model's own heads (``None`` if it has none), which :class:`HeadsEncoder` applies for the served read-out.
    The last text set's pooled states are kept, so scoring many budgets costs one pass.
    """

    def __init__(self, model_dir: Path, max_length: int = 128, batch_size: int = 32) -> None:
        self.model = LoadedModel(model_dir, provider="cpu", max_seq_length=max_length)
        self.batch_size = batch_size
        self.num_layers = self.model.manifest.num_layers
        self.hidden_size = self.model.manifest.hidden_size
        self.dims = list(self.model.manifest.dims)
        self.heads: ExitHeads | None = self.model.heads
        self._key: tuple[str, ...] | None = None
        self._value: np.ndarray | None = None

    def encode(self, texts: Sequence[str], layer: int, dim: int) -> np.ndarray:
        return np.asarray(truncate_normalize(self.encode_all_layers(texts)[layer - 1], dim), dtype=np.float32)

    def encode_all_layers(self, texts: Sequence[str]) -> np.ndarray:
        key = tuple(texts)
        if self._key == key and self._value is not None:
            return self._value
        ids = [e.ids for e in self.model.tokenizer.encode(list(texts))]
        # sort by length so each batch pads little; restore the order afterwards
        order = sorted(range(len(ids)), key=lambda i: ids[i].shape[0])
        out = np.empty((self.num_layers, len(ids), self.hidden_size), dtype=np.float32)
        with tqdm(total=len(ids), desc="embedding", unit="text", leave=False) as bar:
            for start in range(0, len(order), self.batch_size):
                chunk = order[start:start + self.batch_size]
                out[:, chunk] = self.model.pool_all_layers([ids[i] for i in chunk])
                bar.update(len(chunk))
        self._key, self._value = key, out
        return out
