import numpy as np
import pytest

from mipic.training.evaluation.geometry import (
    alignment,
    effective_rank,
    geometry_metrics,
    isotropy,
    uniformity,
)


def test_uniformity_of_antipodal_points() -> None:
    x = np.array([[1.0, 0.0], [-1.0, 0.0]])
    assert uniformity(x) == pytest.approx(-8.0)  # log exp(-2 · 4)


def test_uniformity_square_on_circle() -> None:
    x = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    # 4 neighbouring pairs at squared distance 2, 2 opposite pairs at 4.
    assert uniformity(x) == pytest.approx(np.log((4 * np.exp(-4) + 2 * np.exp(-8)) / 6))
    assert uniformity(np.ones((5, 3)) / np.sqrt(3)) == pytest.approx(0.0)  # collapsed: the maximum


def test_alignment() -> None:
    x = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert alignment(x, x) == 0.0
    assert alignment(x, -x) == pytest.approx(4.0)


def test_effective_rank() -> None:
    assert effective_rank(np.eye(7)) == pytest.approx(7.0)
    assert effective_rank(np.outer(np.ones(5), np.arange(1.0, 4.0))) == pytest.approx(1.0)
    assert effective_rank(np.diag([1.0, 1.0, 1e-12])) == pytest.approx(2.0, abs=1e-6)


def test_isotropy() -> None:
    cross = np.concatenate([np.eye(4), -np.eye(4)])  # ±e_i: the same partition function everywhere
    assert isotropy(cross) == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    narrow = np.array([1.0, 0.0, 0.0]) * 3 + 0.05 * rng.standard_normal((50, 3))
    assert isotropy(narrow) < 0.01


def test_geometry_metrics_renormalises_and_adds_alignment() -> None:
    x = np.array([[2.0, 0.0], [-3.0, 0.0]])
    m = geometry_metrics(x, x, x)
    assert m["uniformity"] == pytest.approx(-8.0)
    assert m["alignment"] == 0.0
    assert set(geometry_metrics(x)) == {"uniformity", "effective_rank", "isotropy"}
