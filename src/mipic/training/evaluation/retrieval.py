"""Dense retrieval by cosine (or any score matrix): nDCG@k (linear gains, as in BEIR/pytrec_eval) and recall@k."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from mipic.training.evaluation.pooling import l2_normalize


def _dcg(gains: np.ndarray) -> float:
    discounts = 1.0 / np.log2(np.arange(2, len(gains) + 2))
    return float(np.sum(gains * discounts))


def retrieval_metrics(
    query_emb: np.ndarray,
    doc_emb: np.ndarray,
    qrels: Sequence[Mapping[int, float]],
    k: int = 10,
) -> dict[str, float]:
    """Rank every document for every query by cosine.

    ``qrels[q]`` maps document row → relevance (> 0 is relevant) for query row ``q``. Queries
    without a relevant document are skipped. Ties keep corpus order.
    """
    if len(qrels) != len(query_emb):
        raise ValueError(f"{len(query_emb)} queries but {len(qrels)} qrels entries")
    return ranking_metrics(l2_normalize(query_emb) @ l2_normalize(doc_emb).T, qrels, k)


def ranking_metrics(scores: np.ndarray, qrels: Sequence[Mapping[int, float]], k: int = 10) -> dict[str, float]:
    """nDCG@k and recall@k of (Q, D) query-document ``scores`` (higher ranks first; ties keep corpus order)."""
    ndcgs: list[float] = []
    recalls: list[float] = []
    for q, rels in enumerate(qrels):
        relevant = {d: g for d, g in rels.items() if g > 0}
        if not relevant:
            continue
        top = np.argsort(-scores[q], kind="stable")[:k]
        gains = np.array([relevant.get(int(d), 0.0) for d in top], dtype=np.float64)
        ideal = np.sort(np.array(list(relevant.values()), dtype=np.float64))[::-1][:k]
        ndcgs.append(_dcg(gains) / _dcg(ideal))
        recalls.append(sum(1 for d in top if int(d) in relevant) / len(relevant))
    if not ndcgs:
        raise ValueError("no query has a relevant document")
    return {f"ndcg@{k}": float(np.mean(ndcgs)), f"recall@{k}": float(np.mean(recalls))}
