import numpy as np
import pytest

from mipic.training.evaluation.probe import probe_accuracy


def test_separable_clusters_probe_near_one() -> None:
    rng = np.random.default_rng(0)
    centers = np.eye(3, 6) * 5
    x = np.concatenate([c + 0.3 * rng.standard_normal((20, 6)) for c in centers])
    y = ["a"] * 20 + ["b"] * 20 + ["c"] * 20
    assert probe_accuracy(x, y)["accuracy"] >= 0.98


def test_random_labels_near_chance_and_seeded() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((60, 4))
    y = rng.integers(0, 2, 60)
    acc = probe_accuracy(x, y, seed=3)["accuracy"]
    assert acc < 0.8
    assert probe_accuracy(x, y, seed=3)["accuracy"] == acc


def test_small_classes() -> None:
    x = np.array([[0.0], [0.1], [1.0], [1.1]])
    assert probe_accuracy(x, [0, 0, 1, 1])["accuracy"] == pytest.approx(1.0)  # 2 folds
    with pytest.raises(ValueError, match="two examples"):
        probe_accuracy(x[:3], [0, 0, 1])
