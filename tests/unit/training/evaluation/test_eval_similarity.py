import numpy as np
import pytest

from mipic.training.evaluation.similarity import (
    pair_classification_metrics,
    pair_similarity_metrics,
    row_cosine,
)


def _angles(theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (e1, (cos θ, sin θ)): cosine is cos θ, decreasing in θ on [0, π]."""
    a = np.tile([1.0, 0.0], (len(theta), 1))
    b = np.stack([np.cos(theta), np.sin(theta)], axis=1)
    return a, b


def test_row_cosine() -> None:
    a, b = _angles(np.array([0.0, np.pi / 2, np.pi]))
    np.testing.assert_allclose(row_cosine(a, 3 * b), [1.0, 0.0, -1.0], atol=1e-12)


def test_monotone_scores_give_spearman_one() -> None:
    theta = np.linspace(0.1, 3.0, 7)
    a, b = _angles(theta)
    gold = np.exp(-theta)  # any decreasing function of the angle: rank-identical to the cosine
    m = pair_similarity_metrics(a, b, gold)
    assert m["spearman"] == pytest.approx(1.0)
    assert m["pearson"] < 1.0
    assert pair_similarity_metrics(a, b, np.cos(theta))["pearson"] == pytest.approx(1.0)
    assert pair_similarity_metrics(a, b, -gold)["spearman"] == pytest.approx(-1.0)


def test_ap_perfect_and_known() -> None:
    a, b = _angles(np.array([0.1, 0.2, 2.0, 2.5]))  # cosines decreasing
    assert pair_classification_metrics(a, b, [1, 1, 0, 0])["ap"] == pytest.approx(1.0)
    # Ranking is 0, 1, 0, 1 (label by rank): precision at the two hits is 1/2 and 2/4.
    assert pair_classification_metrics(a, b, [0, 1, 0, 1])["ap"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="both labels"):
        pair_classification_metrics(a, b, [1, 1, 1, 1])
