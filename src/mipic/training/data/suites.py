"""Built-in eval suites, written as plain files from eval-split documents only.

Formats (the same ones ``mipic eval`` accepts from users):
classification ``{"text", "label"}`` JSONL; pair classification ``{"text1", "text2", "label"}``
JSONL; retrieval a directory with ``queries.jsonl`` ``{"id", "text"}``, ``corpus.jsonl``
``{"id", "text"}`` and ``qrels.jsonl`` ``{"query_id", "doc_id", "score"}``.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mipic.training.data import bbc, news, rotten, wordnet
from mipic.training.data.corpus import DEFAULT_SPLIT_SEED, EVAL_FRACTION, documents_in_split
from mipic.training.data.paths import resolve_data_dir, suites_dir
from mipic.training.data.records import Document
from mipic.training.data.text import clean, split_sentences, text_key

logger = logging.getLogger(__name__)

DEFAULT_SUITE_SIZE = 300
SUITES_FORMAT = "v2"  # bump when the set of suites or how they are built changes
_DONE = ".complete"


@dataclass(frozen=True)
class BuiltinSuiteFiles:
    """Paths of the generated suites, by suite name."""

    root: Path
    classification: dict[str, Path] = field(default_factory=dict)
    pair_labels: dict[str, Path] = field(default_factory=dict)
    retrieval: dict[str, Path] = field(default_factory=dict)


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def _unique(docs: Iterable[Document], *fields: str) -> list[Document]:
    """Drop documents that repeat an earlier one's text in any of ``fields`` (or have it empty)."""
    seen: set[str] = set()
    out: list[Document] = []
    for doc in docs:
        keys = [text_key(getattr(doc, f)) for f in fields]
        if all(keys) and not seen.intersection(keys):
            seen.update(keys)
            out.append(doc)
    return out


def _shuffled(docs: Sequence[Document], seed: int) -> list[Document]:
    out = list(docs)
    random.Random(seed).shuffle(out)
    return out


def _lead(body: str, n_sentences: int = 2) -> str:
    return " ".join(split_sentences(body)[:n_sentences])


def bbc_topic_rows(docs: Sequence[Document], size: int, seed: int) -> list[dict[str, Any]]:
    """Topic classification: the first two body sentences of each article, labelled by topic."""
    picked = _shuffled(_unique(docs, "body"), seed)[:size]
    return [{"text": _lead(d.body), "label": d.label} for d in picked]


def sentiment_rows(docs: Sequence[Document], size: int, seed: int) -> list[dict[str, Any]]:
    """Balanced fresh/rotten review snippets."""
    unique = _shuffled(_unique(docs, "body"), seed)
    per_class = size // 2
    fresh = [d for d in unique if d.label == "fresh"][:per_class]
    rotten_ = [d for d in unique if d.label == "rotten"][: size - len(fresh)]
    rows = [{"text": clean(d.body), "label": d.label} for d in fresh + rotten_]
    random.Random(seed).shuffle(rows)
    return rows


def title_subtitle_rows(docs: Sequence[Document], size: int, seed: int) -> list[dict[str, Any]]:
    """Half true (title, subtitle) pairs, label 1; half titles with another article's subtitle, label 0."""
    picked = _shuffled(_unique(docs, "title", "subtitle"), seed)[:size]
    half = len(picked) // 2
    positives, negatives = picked[:half], picked[half:]
    rows = [{"text1": clean(d.title), "text2": clean(d.subtitle), "label": 1} for d in positives]
    for i, d in enumerate(negatives):  # a cyclic shift is a derangement: no article keeps its own
        other = negatives[(i + 1) % len(negatives)]
        if len(negatives) > 1:
            rows.append({"text1": clean(d.title), "text2": clean(other.subtitle), "label": 0})
    random.Random(seed).shuffle(rows)
    return rows


Retrieval = tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]


def title_body_retrieval(docs: Sequence[Document], size: int, seed: int, query_field: str = "title",
                         doc_field: str = "body") -> Retrieval:
    """Queries are ``size`` titles; the corpus is their bodies plus as many distractor bodies."""
    picked = _shuffled(_unique(docs, query_field, doc_field), seed)[: 2 * size]
    queries = [{"id": f"q{d.doc_id}", "text": clean(getattr(d, query_field))} for d in picked[:size]]
    corpus = [{"id": f"d{d.doc_id}", "text": clean(getattr(d, doc_field))} for d in picked]
    qrels = [{"query_id": f"q{d.doc_id}", "doc_id": f"d{d.doc_id}", "score": 1} for d in picked[:size]]
    return queries, corpus, qrels


def definition_retrieval(docs: Sequence[Document], size: int, seed: int) -> Retrieval:
    """WordNet nouns: the query is a synset's lemmas ("dress uniform"), the document its definition
    ("a military uniform worn on formal occasions"); the corpus adds as many distractor definitions."""
    nouns = [d for d in docs if d.label == "n" and len(d.subtitle.split()) >= 4]
    return title_body_retrieval(nouns, size, seed, query_field="title", doc_field="subtitle")


def write_builtin_suites(
    data_dir: str | Path | None = None,
    size: int = DEFAULT_SUITE_SIZE,
    seed: int = 0,
    *,
    split_seed: int = DEFAULT_SPLIT_SEED,
    eval_fraction: float = EVAL_FRACTION,
) -> BuiltinSuiteFiles:
    """Write (once) and return the built-in suites, ``size`` items each, from eval-split documents:
    BBC topics and RT sentiment (classification), news title↔subtitle (pair classification), news and
    BBC title→body retrieval, and WordNet lemmas→definition retrieval when ``wordnet-base`` is installed."""
    if size < 2:
        raise ValueError(f"size must be >= 2, got {size}")
    root_data = resolve_data_dir(data_dir)
    wn = "-wordnet" if wordnet.wordnet_available() else ""
    root = suites_dir(root_data) / f"{SUITES_FORMAT}-split{split_seed}-f{eval_fraction:g}-seed{seed}-n{size}{wn}"
    files = BuiltinSuiteFiles(
        root=root,
        classification={"bbc_topics": root / "bbc_topics.jsonl", "rt_sentiment": root / "rt_sentiment.jsonl"},
        pair_labels={"news_title_subtitle": root / "news_title_subtitle.jsonl"},
        retrieval={"news_title_body": root / "news_title_body", "bbc_title_body": root / "bbc_title_body"},
    )
    with_wordnet = wordnet.wordnet_available()
    if with_wordnet:
        files.retrieval["wordnet_definitions"] = root / "wordnet_definitions"
    if (root / _DONE).is_file():
        return files

    def eval_docs(source: str) -> list[Document]:
        return documents_in_split(source, "eval", root_data, split_seed, eval_fraction)

    tmp = root.with_name(root.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    bbc_docs = eval_docs(bbc.SOURCE)
    write_jsonl(tmp / "bbc_topics.jsonl", bbc_topic_rows(bbc_docs, size, seed))
    write_jsonl(tmp / "rt_sentiment.jsonl", sentiment_rows(eval_docs(rotten.SOURCE), size, seed))
    news_docs = eval_docs(news.SOURCE)
    write_jsonl(tmp / "news_title_subtitle.jsonl", title_subtitle_rows(news_docs, size, seed))
    retrievals = {"news_title_body": title_body_retrieval(news_docs, size, seed),
                  "bbc_title_body": title_body_retrieval(bbc_docs, size, seed)}
    if with_wordnet:
        retrievals["wordnet_definitions"] = definition_retrieval(eval_docs(wordnet.SOURCE), size, seed)
    for name, (queries, corpus, qrels) in retrievals.items():
        write_jsonl(tmp / name / "queries.jsonl", queries)
        write_jsonl(tmp / name / "corpus.jsonl", corpus)
        write_jsonl(tmp / name / "qrels.jsonl", qrels)
    (tmp / _DONE).write_text("ok\n")
    shutil.rmtree(root, ignore_errors=True)
    tmp.replace(root)
    logger.info("wrote built-in eval suites to %s", root)
    return files
