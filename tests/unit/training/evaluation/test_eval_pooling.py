import numpy as np
import pytest

from mipic.training.evaluation.pooling import (
    POOLING_VARIANTS,
    mean_pool,
    pool_hidden_states,
    truncate_normalize,
)

MASK = np.array([[1, 1, 0], [1, 0, 0]])


def _states(scale: float) -> np.ndarray:
    return scale * np.arange(2 * 3 * 2, dtype=np.float64).reshape(2, 3, 2)  # (B, T, H)


def test_mean_pool_ignores_padding() -> None:
    np.testing.assert_allclose(mean_pool(_states(1), MASK), [[1.0, 2.0], [6.0, 7.0]])


def test_truncate_normalize() -> None:
    out = truncate_normalize(np.array([[3.0, 4.0, 100.0]]), 2)
    np.testing.assert_allclose(out, [[0.6, 0.8]])
    with pytest.raises(ValueError):
        truncate_normalize(np.ones((1, 3)), 4)


def test_variants() -> None:
    hidden = [_states(0), _states(1), _states(3)]  # embeddings, layer 1, layer 2
    np.testing.assert_allclose(pool_hidden_states(hidden, MASK, 2, "cls"), [[0, 3], [18, 21]])
    np.testing.assert_allclose(pool_hidden_states(hidden, MASK, 1, "max"), [[2, 3], [6, 7]])
    np.testing.assert_allclose(pool_hidden_states(hidden, MASK, 2, "mean"), [[3, 6], [18, 21]])
    # average of layers 1 and 2 is 2 × layer 1
    np.testing.assert_allclose(pool_hidden_states(hidden, MASK, 2, "last_layers_avg"), [[2, 4], [12, 14]])
    np.testing.assert_allclose(pool_hidden_states(hidden, MASK, 1, "last_layers_avg"), [[1, 2], [6, 7]])
    np.testing.assert_allclose(pool_hidden_states(hidden, MASK, 2, "first_last_avg"), [[2, 4], [12, 14]])
    assert len(POOLING_VARIANTS) == 5
    with pytest.raises(ValueError, match="layer"):
        pool_hidden_states(hidden, MASK, 3, "mean")
