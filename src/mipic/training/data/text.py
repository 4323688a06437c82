"""Sentence splitting, cleaning, the exact-match key used to hold eval texts out of training, and the digest
of a list of texts (the cache key of their features, the fingerprint of a fitting set in a manifest)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

_WS = re.compile(r"\s+")
# A boundary is end punctuation (optionally followed by a closing quote or bracket), whitespace,
# then something that can start a sentence.
_BOUNDARY = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"”’')\]]))\s+(?=[\"“‘'(\[]?[A-Z0-9])")
# A period after these does not end a sentence ("Mr. Smith", "U.S. officials").
_ABBREVIATIONS = frozenset(
    {"mr", "mrs", "ms", "dr", "prof", "st", "jr", "sr", "sen", "rep", "gov", "gen", "lt", "col", "capt",
     "sgt", "no", "vs", "etc", "inc", "corp", "co", "ltd", "u.s", "u.k", "jan", "feb", "mar", "apr",
     "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec"}
)  # fmt: skip

MIN_WORDS = 6
MAX_WORDS = 64
MIN_CHARS = 25


def clean(text: str) -> str:
    """Collapse runs of whitespace (newlines included) to one space and strip."""
    return _WS.sub(" ", text).strip()


def text_key(text: str) -> str:
    """Key for exact-duplicate detection: case-folded, whitespace-collapsed."""
    return clean(text).casefold()


def _ends_with_abbreviation(fragment: str) -> bool:
    last = fragment.rsplit(" ", 1)[-1].rstrip(".").lstrip("\"“‘'(").casefold()
    return last in _ABBREVIATIONS or (len(last) == 1 and last.isalpha())


def split_sentences(text: str) -> list[str]:
    """Split ``text`` into sentences; paragraph breaks (newlines) always end a sentence."""
    out: list[str] = []
    for paragraph in text.splitlines():
        paragraph = clean(paragraph)
        if not paragraph:
            continue
        pending = ""
        for piece in _BOUNDARY.split(paragraph):
            pending = f"{pending} {piece}" if pending else piece
            if not _ends_with_abbreviation(pending):
                out.append(pending)
                pending = ""
        if pending:
            out.append(pending)
    return out


def is_good_sentence(sentence: str) -> bool:
    """Long enough to carry meaning, short enough to fit a 128-token window."""
    n_words = len(sentence.split())
    return MIN_WORDS <= n_words <= MAX_WORDS and len(sentence) >= MIN_CHARS


def texts_digest(texts: Sequence[str]) -> str:
    """SHA-256 (hex) of the texts in order, each followed by a NUL byte."""
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()
