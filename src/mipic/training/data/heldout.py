"""Texts of eval-split documents, as exact-match keys that training data must never contain.

The document-level split already separates train from eval; this second guard catches texts that
recur across documents (the BBC set has duplicate articles, reviews repeat), so a sentence that
appears anywhere in the eval split is dropped from training even if a train document also has it.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

from mipic.training.data.corpus import (
    DEFAULT_SPLIT_SEED,
    EVAL_FRACTION,
    available_sources,
    documents_in_split,
)
from mipic.training.data.records import Document
from mipic.training.data.text import clean, split_sentences, text_key


def document_units(doc: Document) -> Iterator[str]:
    """Every text an eval suite could be built from: title, subtitle, whole body and its sentences."""
    for field in (doc.title, doc.subtitle, doc.body):
        if field.strip():
            yield clean(field)
            yield from split_sentences(field)


def eval_text_keys(
    data_dir: Path,
    split_seed: int = DEFAULT_SPLIT_SEED,
    eval_fraction: float = EVAL_FRACTION,
) -> frozenset[str]:
    """Keys of every eval-split text of every available source."""
    return _eval_text_keys(data_dir, available_sources(), split_seed, eval_fraction)


@lru_cache(maxsize=4)
def _eval_text_keys(
    data_dir: Path, sources: tuple[str, ...], split_seed: int, eval_fraction: float
) -> frozenset[str]:
    keys: set[str] = set()
    for source in sources:
        for doc in documents_in_split(source, "eval", data_dir, split_seed, eval_fraction):
            keys.update(text_key(u) for u in document_units(doc))
    return frozenset(keys)
