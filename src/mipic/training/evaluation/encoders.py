"""The encoder interface the budget grid needs, and its PyTorch implementation."""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from mipic.training.data.text import texts_digest
from mipic.training.evaluation.pooling import truncate_normalize

logger = logging.getLogger(__name__)


@runtime_checkable
class BudgetEncoder(Protocol):
    """Embeds texts at one (layer, dim) budget.

    ``encode`` returns (N, dim) rows, L2-normalised: mean pooling of ``hidden_states[layer]`` (layer
    1..num_layers) over valid tokens, truncated to ``dim``, re-normalised.
    """

    num_layers: int
    hidden_size: int

    def encode(self, texts: Sequence[str], layer: int, dim: int) -> np.ndarray: ...


@runtime_checkable
class AllLayersEncoder(BudgetEncoder, Protocol):
    """Optional extension: every layer in one pass, so a whole grid costs one forward per text.

    ``encode_all_layers`` returns (L, N, H) full-width mean-pooled, *unnormalised* vectors; index
    ``l - 1`` holds layer ``l``.
    """

    def encode_all_layers(self, texts: Sequence[str]) -> np.ndarray: ...


class TorchBudgetEncoder:
    """A Hugging Face encoder run once per batch with every hidden state returned.

    Pooled full-width vectors of every layer are cached per text set (LRU of ``cache_size``
    sets), so scoring all (layer, dim) budgets of a set costs one forward pass per text. The cache
    does not notice weight updates: call :meth:`clear_cache` after training steps.
    """

    def __init__(
        self,
        model: str | Path | tuple[PreTrainedModel, PreTrainedTokenizerBase],
        *,
        max_length: int = 128,
        batch_size: int = 32,
        cache_size: int = 4,
    ) -> None:
        if isinstance(model, tuple):
            self.model, self.tokenizer = model
        else:
            self.model = AutoModel.from_pretrained(str(model))
            self.tokenizer = AutoTokenizer.from_pretrained(str(model))
        if max_length < 2 or batch_size < 1:
            raise ValueError(f"need max_length >= 2 and batch_size >= 1, got {max_length}, {batch_size}")
        self.max_length = max_length
        self.batch_size = batch_size
        self.num_layers = int(self.model.config.num_hidden_layers)
        self.hidden_size = int(self.model.config.hidden_size)
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_size = cache_size

    def clear_cache(self) -> None:
        self._cache.clear()

    def encode(self, texts: Sequence[str], layer: int, dim: int) -> np.ndarray:
        if not 1 <= layer <= self.num_layers:
            raise ValueError(f"layer must be in 1..{self.num_layers}, got {layer}")
        return truncate_normalize(self.encode_all_layers(texts)[layer - 1], dim)

    def encode_all_layers(self, texts: Sequence[str]) -> np.ndarray:
        key = texts_digest(texts)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        pooled = self._forward_all(texts)
        self._cache[key] = pooled
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return pooled

    def _forward_all(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((self.num_layers, len(texts), self.hidden_size), dtype=np.float32)  # (L, N, H)
        # Longest first, so each batch pads to similar lengths (padding is wasted compute on 2 cores).
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        was_training = self.model.training
        self.model.eval()
        device = next(self.model.parameters()).device
        bar = tqdm(total=len(texts), desc="embedding", unit="text", leave=False)
        try:
            with torch.inference_mode():
                for start in range(0, len(order), self.batch_size):
                    idx = order[start : start + self.batch_size]
                    enc = self.tokenizer(
                        [texts[i] for i in idx],
                        padding=True,
                        truncation=True,
                        max_length=self.max_length,
                        return_tensors="pt",
                    ).to(device)
                    hidden = self.model(**enc, output_hidden_states=True).hidden_states
                    mask = enc["attention_mask"].unsqueeze(-1).to(hidden[0].dtype)  # (B, T, 1)
                    denom = mask.sum(1).clamp_min(1e-9)  # (B, 1)
                    for layer in range(1, self.num_layers + 1):
                        pooled = (hidden[layer] * mask).sum(1) / denom  # (B, H)
                        out[layer - 1, idx] = pooled.float().cpu().numpy()
                    bar.update(len(idx))
        finally:
            bar.close()
            self.model.train(was_training)
        logger.debug("encoded %d texts at %d layers", len(texts), self.num_layers)
        return out
