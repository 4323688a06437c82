"""The served vector, once: pool → head → truncate → normalise, the same numbers on NumPy and torch."""

from __future__ import annotations

import numpy as np
import pytest

from mipic.modeldir.vector import apply_head, embed, l2_normalize, mean_pool, pool, truncate_normalize


def test_mean_pool_ignores_padding_and_empty_rows() -> None:
    states = np.arange(2 * 3 * 2, dtype=np.float32).reshape(2, 3, 2)  # (B, T, H)
    mask = np.array([[1, 1, 0], [0, 0, 0]])
    out = mean_pool(states, mask)
    np.testing.assert_allclose(out[0], [(0 + 2) / 2, (1 + 3) / 2])
    np.testing.assert_allclose(out[1], [0.0, 0.0])  # no real token → zeros, not NaN
    assert out.dtype == np.float32


def test_cls_pool_and_bad_shapes() -> None:
    states = np.random.default_rng(0).standard_normal((2, 4, 3)).astype(np.float32)
    np.testing.assert_array_equal(pool(states, np.ones((2, 4)), "cls"), states[:, 0])
    with pytest.raises(ValueError, match="need states"):
        mean_pool(states, np.ones((2, 5)))
    with pytest.raises(ValueError, match="unknown pooling"):
        pool(states, np.ones((2, 4)), "max")


def test_truncate_then_normalise() -> None:
    x = np.array([[3.0, 4.0, 12.0]], dtype=np.float32)
    np.testing.assert_allclose(truncate_normalize(x, 2), [[0.6, 0.8]])
    np.testing.assert_allclose(l2_normalize(np.zeros((1, 3))), 0.0)
    with pytest.raises(ValueError, match=r"dim must be in 1\.\.3, got 4"):
        truncate_normalize(x, 4)


def test_head_computes_only_the_prefix_rows() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5, 6)).astype(np.float32)
    w = rng.standard_normal((6, 6)).astype(np.float32)
    b = rng.standard_normal(6).astype(np.float32)
    full = x @ w.T + b
    np.testing.assert_allclose(apply_head(x, w, b, 2), full[:, :2], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(embed(x, 3, (w, b)), full[:, :3] / np.linalg.norm(full[:, :3], axis=1, keepdims=True),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(embed(x, 4), truncate_normalize(x, 4))


def test_numpy_and_torch_give_the_same_vectors_and_torch_has_gradients() -> None:
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    states = rng.standard_normal((3, 5, 8)).astype(np.float32)
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    w = rng.standard_normal((8, 8)).astype(np.float32)
    b = rng.standard_normal(8).astype(np.float32)
    ref = embed(mean_pool(states, mask), 4, (w, b))
    wt = torch.tensor(w, requires_grad=True)
    out = embed(mean_pool(torch.from_numpy(states), torch.from_numpy(mask)), 4, (wt, torch.from_numpy(b)))
    np.testing.assert_allclose(out.detach().numpy(), ref, atol=1e-6)
    out.sum().backward()
    assert wt.grad is not None and float(wt.grad[:4].abs().sum()) > 0
    assert float(wt.grad[4:].abs().sum()) == 0.0  # rows past the prefix are not used
