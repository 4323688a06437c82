"""Eval suites: user files or built-in ones, each a set of texts and a scorer over their embeddings."""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from mipic.training.evaluation.geometry import geometry_metrics
from mipic.training.evaluation.probe import probe_accuracy
from mipic.training.evaluation.retrieval import retrieval_metrics
from mipic.training.evaluation.similarity import pair_classification_metrics, pair_similarity_metrics

Embed = Callable[[Sequence[str]], np.ndarray]
"""Texts → (N, dim) embeddings at the budget being scored (texts must be among the suite's)."""


class Suite(Protocol):
    name: str
    main_metric: str

    def texts(self) -> list[str]: ...

    def positive_pairs(self) -> list[tuple[str, str]]: ...

    def evaluate(self, embed: Embed) -> dict[str, float]: ...


def _read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    with Path(path).open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: invalid JSON ({exc.msg})") from exc


def _require(row: dict[str, Any], keys: Sequence[str], where: str) -> None:
    missing = [k for k in keys if k not in row]
    if missing:
        raise ValueError(f"{where}: missing field(s) {missing}")


def _subsample(rows: list[Any], max_items: int | None, seed: int) -> list[Any]:
    if max_items is None or len(rows) <= max_items:
        return rows
    return random.Random(seed).sample(rows, max_items)


@dataclass
class PairSimilaritySuite:
    """Graded pairs ``{"text1", "text2", "score"}`` → Spearman/Pearson of cosine."""

    name: str
    text1: list[str]
    text2: list[str]
    scores: list[float]
    main_metric: str = "spearman"

    def texts(self) -> list[str]:
        return [*self.text1, *self.text2]

    def positive_pairs(self) -> list[tuple[str, str]]:
        return []  # graded: no threshold is safe to call "positive"

    def evaluate(self, embed: Embed) -> dict[str, float]:
        return pair_similarity_metrics(embed(self.text1), embed(self.text2), self.scores)


@dataclass
class PairClassificationSuite:
    """Labelled pairs ``{"text1", "text2", "label": 0|1}`` → average precision of cosine."""

    name: str
    text1: list[str]
    text2: list[str]
    labels: list[int]
    main_metric: str = "ap"

    def texts(self) -> list[str]:
        return [*self.text1, *self.text2]

    def positive_pairs(self) -> list[tuple[str, str]]:
        return [(a, b) for a, b, y in zip(self.text1, self.text2, self.labels, strict=True) if y == 1]

    def evaluate(self, embed: Embed) -> dict[str, float]:
        return pair_classification_metrics(embed(self.text1), embed(self.text2), self.labels)


@dataclass
class RetrievalSuite:
    """Queries, corpus and graded qrels → nDCG@10 and recall@10."""

    name: str
    queries: dict[str, str]
    corpus: dict[str, str]
    qrels: dict[str, dict[str, float]]
    main_metric: str = "ndcg@10"

    def texts(self) -> list[str]:
        return [*self.queries.values(), *self.corpus.values()]

    def positive_pairs(self) -> list[tuple[str, str]]:
        return [
            (self.queries[q], self.corpus[d])
            for q, rels in self.qrels.items()
            for d, g in rels.items()
            if g > 0 and q in self.queries and d in self.corpus
        ]

    def evaluate(self, embed: Embed) -> dict[str, float]:
        return self._rank(embed, embed)

    def evaluate_index(self, embed_query: Embed, embed_doc: Embed) -> dict[str, float]:
        """Queries embedded by ``embed_query`` against documents embedded by ``embed_doc`` (e.g. a query at
        a shallow exit against an index built at the last layer); metrics named ``index_<metric>``."""
        return {f"index_{k}": v for k, v in self._rank(embed_query, embed_doc).items()}

    def _rank(self, embed_query: Embed, embed_doc: Embed) -> dict[str, float]:
        doc_ids = list(self.corpus)
        row_of = {d: i for i, d in enumerate(doc_ids)}
        query_ids = list(self.queries)
        rels = [{row_of[d]: g for d, g in self.qrels.get(q, {}).items() if d in row_of} for q in query_ids]
        q_emb = embed_query([self.queries[q] for q in query_ids])
        d_emb = embed_doc([self.corpus[d] for d in doc_ids])
        return retrieval_metrics(q_emb, d_emb, rels, k=10)


@dataclass
class ClassificationSuite:
    """Labelled texts ``{"text", "label"}`` → cross-validated logistic-regression accuracy."""

    name: str
    items: list[str]
    labels: list[str]
    folds: int = 5
    seed: int = 0
    main_metric: str = "accuracy"

    def texts(self) -> list[str]:
        return list(self.items)

    def positive_pairs(self) -> list[tuple[str, str]]:
        return []

    def evaluate(self, embed: Embed) -> dict[str, float]:
        return probe_accuracy(embed(self.items), self.labels, folds=self.folds, seed=self.seed)


@dataclass
class GeometrySuite:
    """Uniformity, effective rank and isotropy of a text sample; alignment of positive pairs."""

    name: str
    sample: list[str]
    pairs: list[tuple[str, str]] = field(default_factory=list)
    main_metric: str = "uniformity"

    def texts(self) -> list[str]:
        return [*self.sample, *(t for p in self.pairs for t in p)]

    def positive_pairs(self) -> list[tuple[str, str]]:
        return list(self.pairs)

    def evaluate(self, embed: Embed) -> dict[str, float]:
        a = embed([p[0] for p in self.pairs]) if self.pairs else None
        b = embed([p[1] for p in self.pairs]) if self.pairs else None
        return geometry_metrics(embed(self.sample), a, b)


def geometry_suite(
    suites: Sequence[Suite], max_texts: int = 1000, max_pairs: int = 1000, seed: int = 0
) -> GeometrySuite:
    """Geometry over a seeded sample of every suite's distinct texts and positive pairs."""
    texts = list(dict.fromkeys(t for s in suites for t in s.texts()))
    pairs = list(dict.fromkeys(p for s in suites for p in s.positive_pairs()))
    return GeometrySuite("geometry", _subsample(texts, max_texts, seed), _subsample(pairs, max_pairs, seed))


# --------------------------------------------------------------------------- file loaders


def load_pair_similarity(
    path: Path, name: str | None = None, max_items: int | None = None, seed: int = 0
) -> PairSimilaritySuite:
    rows = list(_read_jsonl(path))
    for i, row in enumerate(rows):
        _require(row, ("text1", "text2", "score"), f"{path} row {i}")
    rows = _subsample(rows, max_items, seed)
    return PairSimilaritySuite(
        name or Path(path).stem,
        [str(r["text1"]) for r in rows],
        [str(r["text2"]) for r in rows],
        [float(r["score"]) for r in rows],
    )


def load_pair_classification(
    path: Path, name: str | None = None, max_items: int | None = None, seed: int = 0
) -> PairClassificationSuite:
    rows = list(_read_jsonl(path))
    for i, row in enumerate(rows):
        _require(row, ("text1", "text2", "label"), f"{path} row {i}")
        if int(row["label"]) not in (0, 1):
            raise ValueError(f"{path} row {i}: label must be 0 or 1, got {row['label']!r}")
    rows = _subsample(rows, max_items, seed)
    return PairClassificationSuite(
        name or Path(path).stem,
        [str(r["text1"]) for r in rows],
        [str(r["text2"]) for r in rows],
        [int(r["label"]) for r in rows],
    )


def load_classification(
    path: Path, name: str | None = None, max_items: int | None = None, seed: int = 0
) -> ClassificationSuite:
    rows = list(_read_jsonl(path))
    for i, row in enumerate(rows):
        _require(row, ("text", "label"), f"{path} row {i}")
    rows = _subsample(rows, max_items, seed)
    return ClassificationSuite(
        name or Path(path).stem, [str(r["text"]) for r in rows], [str(r["label"]) for r in rows], seed=seed
    )


def load_retrieval(
    directory: Path, name: str | None = None, max_items: int | None = None, seed: int = 0
) -> RetrievalSuite:
    """``max_items`` caps the queries; the corpus keeps their relevant documents plus up to
    ``max_items`` seeded distractors."""
    directory = Path(directory)
    queries = {str(r["id"]): str(r["text"]) for r in _read_jsonl(directory / "queries.jsonl")}
    corpus = {str(r["id"]): str(r["text"]) for r in _read_jsonl(directory / "corpus.jsonl")}
    qrels: dict[str, dict[str, float]] = {}
    for i, r in enumerate(_read_jsonl(directory / "qrels.jsonl")):
        _require(r, ("query_id", "doc_id", "score"), f"{directory / 'qrels.jsonl'} row {i}")
        qrels.setdefault(str(r["query_id"]), {})[str(r["doc_id"])] = float(r["score"])
    judged = [q for q in queries if any(g > 0 for g in qrels.get(q, {}).values())]
    if not judged:
        raise ValueError(f"{directory}: no query has a relevant document in qrels.jsonl")
    kept = _subsample(judged, max_items, seed)
    queries = {q: queries[q] for q in kept}
    if max_items is not None:
        relevant = {d for q in kept for d in qrels.get(q, {}) if d in corpus}
        others = _subsample(sorted(set(corpus) - relevant), max_items, seed)
        keep = relevant | set(others)
        corpus = {d: t for d, t in corpus.items() if d in keep}
    return RetrievalSuite(name or directory.name, queries, corpus, {q: qrels[q] for q in kept})


def builtin_suites(data_dir: str | Path | None = None, size: int = 300, seed: int = 0) -> list[Suite]:
    """The built-in suites (see ``write_builtin_suites``): classification, pair classification, retrieval."""
    from mipic.training.data.suites import write_builtin_suites

    files = write_builtin_suites(data_dir, size=size, seed=seed)
    suites: list[Suite] = []
    suites += [load_classification(p, name, seed=seed) for name, p in files.classification.items()]
    suites += [load_pair_classification(p, name, seed=seed) for name, p in files.pair_labels.items()]
    suites += [load_retrieval(p, name, seed=seed) for name, p in files.retrieval.items()]
    return suites


def collect_suites(
    pairs: Path | None = None,
    pair_labels: Path | None = None,
    retrieval: Path | None = None,
    classification: Path | None = None,
    builtin: bool = False,
    max_items: int = 300,
    data_dir: Path | None = None,
    seed: int = 0,
) -> list[Suite]:
    """User files (each capped at ``max_items``, seeded) followed by the built-in suites."""
    suites: list[Suite] = []
    if pairs is not None:
        suites.append(load_pair_similarity(pairs, max_items=max_items, seed=seed))
    if pair_labels is not None:
        suites.append(load_pair_classification(pair_labels, max_items=max_items, seed=seed))
    if retrieval is not None:
        suites.append(load_retrieval(retrieval, max_items=max_items, seed=seed))
    if classification is not None:
        suites.append(load_classification(classification, max_items=max_items, seed=seed))
    if builtin:
        taken = {s.name for s in suites}
        for suite in builtin_suites(data_dir, size=max_items, seed=seed):
            if suite.name in taken:  # a user file named like a built-in suite keeps its name
                suite.name = f"builtin_{suite.name}"
            suites.append(suite)
    if not suites:
        raise ValueError(
            "nothing to evaluate: give --pairs, --pair-labels, --retrieval, --classification or --builtin"
        )
    return suites
