import numpy as np
import pytest

from mipic.training.evaluation.retrieval import retrieval_metrics


def test_perfect_retrieval() -> None:
    docs = np.eye(12)
    queries = docs[:5] + 0.01
    m = retrieval_metrics(queries, docs, [{i: 1.0} for i in range(5)])
    assert m == {"ndcg@10": pytest.approx(1.0), "recall@10": pytest.approx(1.0)}


def test_reversed_ranking_known_value() -> None:
    # One query; doc cosines fall with the index, so the ranking is 0, 1, ..., 11.
    docs = np.stack([np.array([np.cos(t), np.sin(t)]) for t in np.linspace(0.0, 1.5, 12)])
    query = np.array([[1.0, 0.0]])
    # Relevant docs 9 (gain 2) and 8 (gain 1) rank 10th and 9th: DCG = 1/log2(10) + 2/log2(11).
    m = retrieval_metrics(query, docs, [{9: 2.0, 8: 1.0}])
    ideal = 2.0 + 1.0 / np.log2(3)
    assert m["ndcg@10"] == pytest.approx((1 / np.log2(10) + 2 / np.log2(11)) / ideal)
    assert m["recall@10"] == pytest.approx(1.0)
    # Doc 11 ranks 12th: outside the top 10.
    assert retrieval_metrics(query, docs, [{11: 1.0}]) == {"ndcg@10": 0.0, "recall@10": 0.0}


def test_queries_without_relevant_docs_are_skipped() -> None:
    docs = np.eye(3)
    m = retrieval_metrics(docs, docs, [{0: 1.0}, {}, {1: 0.0}])
    assert m["ndcg@10"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="no query"):
        retrieval_metrics(docs[:1], docs, [{}])
