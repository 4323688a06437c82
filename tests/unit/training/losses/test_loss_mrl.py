"""Matryoshka InfoNCE."""

from __future__ import annotations

import math
import re

import pytest
import torch

from mipic.training.losses import MatryoshkaInfoNCELoss


def _nce(sim: list[list[float]], tau: float) -> float:
    """Hand-written InfoNCE from a cosine matrix."""
    n = len(sim)
    return (
        -sum(sim[i][i] / tau - math.log(sum(math.exp(sim[i][j] / tau) for j in range(n))) for i in range(n))
        / n
    )


def test_two_dim_case_matches_hand_computed_sum() -> None:
    a = torch.tensor([[1.0, 1.0], [-1.0, 2.0]])
    b = torch.tensor([[2.0, 0.0], [1.0, 1.0]])
    tau = 0.5
    # d = 1: prefixes normalise to signs: a → [1, -1], b → [1, 1]; cos = product of signs.
    sim1 = [[1.0, 1.0], [-1.0, -1.0]]

    # d = 2: full cosines.
    def cos(u: list[float], v: list[float]) -> float:
        return (u[0] * v[0] + u[1] * v[1]) / (math.hypot(*u) * math.hypot(*v))

    al, bl = a.tolist(), b.tolist()
    sim2 = [[cos(al[i], bl[j]) for j in range(2)] for i in range(2)]
    expected = 0.3 * _nce(sim1, tau) + 2.0 * _nce(sim2, tau)
    loss = MatryoshkaInfoNCELoss(dims=[1, 2], weights=[0.3, 2.0], temperature=tau)(a, b)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    # d = 1 term alone is log(1 + e^0) + ... : sanity check the hand formula itself
    assert _nce(sim1, tau) == pytest.approx(math.log(2), rel=1e-9)


def test_per_dim_and_default_weights() -> None:
    torch.manual_seed(0)
    a, b = torch.randn(4, 8), torch.randn(4, 8)
    loss = MatryoshkaInfoNCELoss(dims=(2, 4, 8))
    parts = loss.per_dim(a, b)
    assert len(parts) == 3
    assert loss(a, b).item() == pytest.approx(sum(p.item() for p in parts), rel=1e-6)


def test_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match=r"^dims must not be empty$"):
        MatryoshkaInfoNCELoss(dims=[])
    with pytest.raises(ValueError, match=re.escape("dims must be strictly increasing, got [8, 4]")):
        MatryoshkaInfoNCELoss(dims=[8, 4])
    with pytest.raises(ValueError, match=re.escape("dims must be positive integers, got [-4, 8]")):
        MatryoshkaInfoNCELoss(dims=[-4, 8])
    with pytest.raises(ValueError, match=re.escape("weights must have one entry per dim (2), got 3")):
        MatryoshkaInfoNCELoss(dims=[4, 8], weights=[1, 1, 1])
    with pytest.raises(ValueError, match=re.escape("temperature must be > 0, got -1")):
        MatryoshkaInfoNCELoss(dims=[4, 8], temperature=-1)
    with pytest.raises(ValueError, match=re.escape("largest dim 16 exceeds the embedding size 8")):
        MatryoshkaInfoNCELoss(dims=[4, 16])(torch.randn(2, 8), torch.randn(2, 8))
