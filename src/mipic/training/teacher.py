"""The frozen teacher's pooled last-layer vectors, computed once per distinct training text before the run.

The teacher is the base encoder in eval mode with no gradient (``SimCSEModel``): its vector for a text never
changes during a run. Running it on every row of every step repeats work twice over — a sentence paired with
itself (two thirds of the default recipe's examples) is the same text on both sides, and every epoch after
the first meets the same texts again. :class:`TeacherTable` runs the teacher once over the run's distinct
texts (anchors and positives together) and the training step looks each row's vector up by its key (the
dataset's ``text_key`` / ``pos_key`` columns, an index into the distinct texts).

The table is computed in a fixed order (distinct texts sorted by token length, cut into fixed-size batches,
each padded to its own longest row), so it depends only on the set of texts: a resumed run rebuilds the same
table bit for bit and resumes exactly. Each vector equals the per-step computation up to float rounding
(padding is masked out of attention and pooling; tested ≤ 1e-5). Memory: ``H`` floats per distinct text
(the default recipe's 33,653 texts × 384 × 4 B ≈ 52 MB); it is not checkpointed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from mipic.training.losses import mean_pool

logger = logging.getLogger(__name__)


def text_keys(texts: Sequence[str], positives: Sequence[str] | None = None
              ) -> tuple[list[str], list[int], list[int] | None]:
    """(distinct texts in order of first appearance, each text's key, each positive's key): the same key for
    the same string wherever it appears, so a text paired with itself has one key."""
    index: dict[str, int] = {}
    text_key = [index.setdefault(t, len(index)) for t in texts]
    pos_key = None if positives is None else [index.setdefault(p, len(index)) for p in positives]
    return list(index), text_key, pos_key


class TeacherTable:
    """``vectors[k]``: the teacher's mean-pooled last layer for distinct text k, (N, H)."""

    def __init__(self, vectors: Tensor) -> None:
        if vectors.ndim != 2:
            raise ValueError(f"need (N, H) vectors, got {tuple(vectors.shape)}")
        self.vectors = vectors

    def __len__(self) -> int:
        return int(self.vectors.shape[0])

    @classmethod
    @torch.no_grad()
    def build(cls, teacher: nn.Module, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_length: int,
              *, batch_size: int = 64, device: torch.device | str = "cpu") -> TeacherTable:
        """Run ``teacher`` (eval mode) over ``texts``, shortest first in batches of ``batch_size``."""
        start = time.perf_counter()
        if not texts:
            raise ValueError("no texts to run the teacher on")
        teacher.eval()
        nn.Module.to(teacher, device)
        ids = tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
        order = sorted(range(len(texts)), key=lambda i: (len(ids[i]), i))
        out: Tensor | None = None
        for lo in range(0, len(order), batch_size):
            rows = order[lo:lo + batch_size]
            batch = tokenizer([texts[i] for i in rows], padding=True, truncation=True, max_length=max_length,
                              return_tensors="pt")
            input_ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
            pooled = mean_pool(teacher(input_ids=input_ids, attention_mask=mask).last_hidden_state, mask)
            if out is None:
                out = torch.empty(len(texts), pooled.shape[1], dtype=pooled.dtype, device=device)
            out[torch.tensor(rows, device=device)] = pooled
        assert out is not None
        logger.info("teacher vectors for %d distinct texts in %.1f s", len(texts), time.perf_counter() - start)
        return cls(out)

    def lookup(self, keys: Tensor) -> Tensor:
        """(B,) keys → (B, H) vectors, on the keys' device."""
        if self.vectors.device != keys.device:
            self.vectors = self.vectors.to(keys.device)
        return self.vectors[keys]
