"""InfoNCE with in-batch negatives."""

from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F

from mipic.training.losses import InfoNCELoss


def test_aligned_one_hot_at_small_temperature_is_near_zero() -> None:
    x = torch.eye(4, 6)  # 4 orthogonal unit vectors
    loss = InfoNCELoss(temperature=0.01)(x, x.clone())
    # off-diagonal logits are 0, diagonal 100: loss = log(1 + 3 e^-100)
    assert loss.item() == pytest.approx(0.0, abs=1e-6)


def test_identical_embeddings_give_log_batch_size() -> None:
    x = torch.ones(5, 3)
    assert InfoNCELoss(temperature=0.05)(x, x).item() == pytest.approx(math.log(5), rel=1e-6)
    assert InfoNCELoss(temperature=0.05, symmetric=True)(x, x).item() == pytest.approx(math.log(5), rel=1e-6)


def test_matches_reference_formula() -> None:
    torch.manual_seed(0)
    a, b = torch.randn(6, 8), torch.randn(6, 8)
    tau = 0.1
    sim = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T / tau
    expected = -(sim.diag() - sim.logsumexp(dim=1)).mean()
    expected_sym = 0.5 * (expected - (sim.diag() - sim.logsumexp(dim=0)).mean())
    assert InfoNCELoss(tau)(a, b).item() == pytest.approx(expected.item(), rel=1e-5)
    assert InfoNCELoss(tau, symmetric=True)(a, b).item() == pytest.approx(expected_sym.item(), rel=1e-5)


def test_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match=re.escape("temperature must be > 0, got 0.0")):
        InfoNCELoss(temperature=0.0)
    with pytest.raises(ValueError, match="a and b must both be"):
        InfoNCELoss()(torch.randn(3, 4), torch.randn(3, 5))
