"""Unlabeled sentences for self-supervised (SimCSE-style) training, from one split."""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator, Sequence
from pathlib import Path

from mipic.training.data.corpus import (
    DEFAULT_SPLIT_SEED,
    EVAL_FRACTION,
    Split,
    available_sources,
    documents_in_split,
)
from mipic.training.data.heldout import eval_text_keys
from mipic.training.data.paths import resolve_data_dir
from mipic.training.data.records import Document
from mipic.training.data.text import clean, is_good_sentence, split_sentences, text_key

logger = logging.getLogger(__name__)


def document_sentences(doc: Document) -> Iterator[str]:
    """Title, subtitle and body sentences that pass :func:`is_good_sentence`."""
    for field in (doc.title, doc.subtitle):
        if is_good_sentence(clean(field)):
            yield clean(field)
    for sentence in split_sentences(doc.body):
        if is_good_sentence(sentence):
            yield sentence


def load_sentences(
    n: int | None = 20_000,
    seed: int = 0,
    split: Split = "train",
    *,
    data_dir: str | Path | None = None,
    sources: Sequence[str] | None = None,
    split_seed: int = DEFAULT_SPLIT_SEED,
    eval_fraction: float = EVAL_FRACTION,
) -> list[str]:
    """``n`` distinct sentences (all if ``None``) from ``split``, shuffled with ``seed``.

    Training sentences never equal (case- and whitespace-insensitively) any eval-split text.
    """
    root = resolve_data_dir(data_dir)
    banned = eval_text_keys(root, split_seed, eval_fraction) if split == "train" else frozenset()
    seen: set[str] = set()
    pool: list[str] = []
    for source in sources or available_sources():
        for doc in documents_in_split(source, split, root, split_seed, eval_fraction):
            for sentence in document_sentences(doc):
                key = text_key(sentence)
                if key not in seen and key not in banned:
                    seen.add(key)
                    pool.append(sentence)
    random.Random(seed).shuffle(pool)
    if n is not None and n > len(pool):
        logger.warning("asked for %d %s sentences, only %d available", n, split, len(pool))
    return pool if n is None else pool[:n]


def load_passages(
    n: int | None = 2000,
    seed: int = 0,
    split: Split = "train",
    *,
    n_sentences: int = 3,
    data_dir: str | Path | None = None,
    sources: Sequence[str] = ("news", "bbc"),
    split_seed: int = DEFAULT_SPLIT_SEED,
    eval_fraction: float = EVAL_FRACTION,
) -> list[str]:
    """``n`` document-like passages (the first ``n_sentences`` sentences of article bodies) from ``split``,
    shuffled with ``seed``. In the train split a passage is dropped when it, or any of its sentences,
    equals an eval-split text."""
    root = resolve_data_dir(data_dir)
    banned = eval_text_keys(root, split_seed, eval_fraction) if split == "train" else frozenset()
    seen: set[str] = set()
    pool: list[str] = []
    for source in sources:
        for doc in documents_in_split(source, split, root, split_seed, eval_fraction):
            sentences = split_sentences(doc.body)[:n_sentences]
            passage = " ".join(sentences)
            key = text_key(passage)
            if len(passage.split()) < 12 or key in seen or key in banned:
                continue
            if any(text_key(s) in banned for s in sentences):
                continue
            seen.add(key)
            pool.append(passage)
    random.Random(seed).shuffle(pool)
    return pool if n is None else pool[:n]
