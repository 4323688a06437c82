"""Weakly supervised positive pairs (title↔subtitle, title→first sentence or lead, WordNet glosses)."""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal

from mipic.training.data import bbc, news, wordnet
from mipic.training.data.corpus import (
    DEFAULT_SPLIT_SEED,
    EVAL_FRACTION,
    Split,
    documents_in_split,
)
from mipic.training.data.heldout import eval_text_keys
from mipic.training.data.paths import resolve_data_dir
from mipic.training.data.records import Document
from mipic.training.data.text import clean, is_good_sentence, split_sentences, text_key

logger = logging.getLogger(__name__)

PairKind = Literal["title_subtitle", "title_first_sentence", "title_body", "gloss_example", "lemmas_gloss"]
DEFAULT_PAIR_KINDS: tuple[PairKind, ...] = ("title_subtitle", "title_first_sentence")
_SOURCES_OF: dict[str, tuple[str, ...]] = {
    "title_subtitle": (news.SOURCE,),
    "title_first_sentence": (news.SOURCE, bbc.SOURCE),
    "title_body": (news.SOURCE, bbc.SOURCE),
    "gloss_example": (wordnet.SOURCE,),
    "lemmas_gloss": (wordnet.SOURCE,),
}


def first_sentence(text: str) -> str:
    """The first sentence of ``text`` that passes :func:`is_good_sentence`, or ``""``."""
    return next((s for s in split_sentences(text) if is_good_sentence(s)), "")


def document_pairs(doc: Document, kind: PairKind) -> Iterator[tuple[str, str]]:
    """The pairs of ``kind`` one document yields (possibly none)."""
    if kind == "title_subtitle":
        yield clean(doc.title), clean(doc.subtitle)
    elif kind == "title_first_sentence":
        yield clean(doc.title), first_sentence(doc.body)
    elif kind == "title_body":  # a query-like title → its article's lead (three sentences), document-like
        yield clean(doc.title), " ".join(split_sentences(doc.body)[:3])
    elif kind == "gloss_example":  # WordNet: subtitle = definition, body = examples
        for example in doc.body.splitlines():
            yield clean(doc.subtitle), clean(example)
    elif kind == "lemmas_gloss":
        yield clean(doc.title), clean(doc.subtitle)
    else:
        raise ValueError(f"unknown pair kind {kind!r}")


def load_pairs(
    n: int | None = None,
    seed: int = 0,
    split: Split = "train",
    *,
    kinds: Sequence[PairKind] = DEFAULT_PAIR_KINDS,
    data_dir: str | Path | None = None,
    split_seed: int = DEFAULT_SPLIT_SEED,
    eval_fraction: float = EVAL_FRACTION,
) -> list[tuple[str, str]]:
    """``n`` distinct (anchor, positive) pairs (all if ``None``) from ``split``, shuffled with ``seed``.

    In the train split a pair is dropped when either side equals an eval-split text.
    WordNet kinds need Debian's ``wordnet-base``.
    """
    root = resolve_data_dir(data_dir)
    banned = eval_text_keys(root, split_seed, eval_fraction) if split == "train" else frozenset()
    seen: set[tuple[str, str]] = set()
    pairs: list[tuple[str, str]] = []
    for kind in kinds:
        if kind not in _SOURCES_OF:
            raise ValueError(f"unknown pair kind {kind!r}; expected one of {sorted(_SOURCES_OF)}")
        if _SOURCES_OF[kind] == (wordnet.SOURCE,) and not wordnet.wordnet_available():
            raise ValueError(f"pair kind {kind!r} needs WordNet at {wordnet.WORDNET_DIR}")
        for source in _SOURCES_OF[kind]:
            for doc in documents_in_split(source, split, root, split_seed, eval_fraction):
                for a, b in document_pairs(doc, kind):
                    key = (text_key(a), text_key(b))
                    if not a or not b or key[0] == key[1] or key in seen:
                        continue
                    if key[0] in banned or key[1] in banned:
                        continue
                    if banned and any(text_key(x) in banned for x in split_sentences(b)):
                        continue  # a lead passage must not carry an eval-split sentence either
                    seen.add(key)
                    pairs.append((a, b))
    random.Random(seed).shuffle(pairs)
    if n is not None and n > len(pairs):
        logger.warning("asked for %d %s pairs, only %d available", n, split, len(pairs))
    return pairs if n is None else pairs[:n]
