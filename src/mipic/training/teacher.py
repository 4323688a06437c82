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
(the default recipe's 33,653 texts × 384 × 4 B ≈ 52 MB). :meth:`TeacherTable.load_or_build` keeps it in the run's
output directory (``teacher_table.pt``) under a fingerprint of everything it depends on (the teacher's weights,
the distinct texts, the maximum length, the batch size), so resuming a run reads it back instead of spending the
teacher's pass again (~4 min for the default recipe on 2 cores); any difference in those rebuilds it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from mipic.training.losses import mean_pool

logger = logging.getLogger(__name__)

TABLE_FILE = "teacher_table.pt"


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

    @classmethod
    def load_or_build(cls, path: Path, teacher: nn.Module, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str],
                      max_length: int, *, batch_size: int = 64, device: torch.device | str = "cpu") -> TeacherTable:
        """The table saved at ``path`` when its fingerprint matches this teacher, these texts and settings;
        otherwise :meth:`build` it and save it there (written to a temporary name, then renamed: a reader never
        sees half a file)."""
        key = fingerprint(teacher, texts, max_length, batch_size)
        if path.is_file():
            try:
                saved = torch.load(path, map_location=device, weights_only=True)
                if saved.get("fingerprint") == key:
                    logger.info("teacher vectors for %d distinct texts read from %s", len(texts), path)
                    return cls(saved["vectors"])
                logger.info("%s is for another teacher, texts or settings: building it again", path)
            except Exception as exc:  # torch.load's errors vary by what is wrong (pickle, zip, OS): rebuild
                logger.warning("%s unreadable (%s): building it again", path, exc)
        table = cls.build(teacher, tokenizer, texts, max_length, batch_size=batch_size, device=device)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # one per process (DDP ranks write the same file)
        torch.save({"fingerprint": key, "vectors": table.vectors.cpu()}, tmp)
        os.replace(tmp, path)
        return table

    def lookup(self, keys: Tensor) -> Tensor:
        """(B,) keys → (B, H) vectors, on the keys' device."""
        if self.vectors.device != keys.device:
            self.vectors = self.vectors.to(keys.device)
        return self.vectors[keys]


def fingerprint(teacher: nn.Module, texts: Sequence[str], max_length: int, batch_size: int) -> str:
    """SHA-256 over what the table's values depend on: every parameter and buffer of ``teacher`` (names and
    bytes), the texts in order, the maximum length and the batch size (it sets the padding, hence the rounding).
    The tokenizer is not hashed: the trainer loads it with the teacher's weights, from the same base model."""
    h = hashlib.sha256(f"{max_length}|{batch_size}|{len(texts)}".encode())
    for name, tensor in teacher.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    for t in texts:
        h.update(t.encode())
        h.update(b"\0")
    return h.hexdigest()
