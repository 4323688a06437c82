"""2D Matryoshka (adaptive layer) loss."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F

from mipic.training.losses import AdaptiveLayerMatryoshkaLoss, MatryoshkaInfoNCELoss


def _views(
    num_layers: int = 3, batch: int = 6, size: int = 8
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    torch.manual_seed(0)
    a = [torch.randn(batch, size, requires_grad=True) for _ in range(num_layers + 1)]
    b = [torch.randn(batch, size) for _ in range(num_layers + 1)]
    return a, b


def test_without_kl_is_weighted_sum_of_per_layer_mrl() -> None:
    a, b = _views()
    mrl = MatryoshkaInfoNCELoss(dims=(4, 8))
    uniform = AdaptiveLayerMatryoshkaLoss(dims=(4, 8), layers=(1, 3), kl_weight=0.0)
    expected = mrl(a[1], b[1]) + mrl(a[3], b[3])
    assert uniform(a, b).item() == pytest.approx(expected.item(), rel=1e-6)
    # linear: 1 / (1 + L - l) with L = 3 → layer 1: 1/3, layer 3: 1
    linear = AdaptiveLayerMatryoshkaLoss(dims=(4, 8), layers=(1, 3), kl_weight=0.0, layer_weighting="linear")
    assert linear.layer_weights(3) == pytest.approx((1 / 3, 1.0))
    expected_lin = mrl(a[1], b[1]) / 3 + mrl(a[3], b[3])
    assert linear(a, b).item() == pytest.approx(expected_lin.item(), rel=1e-6)


def test_kl_term_value_and_teacher_is_detached() -> None:
    a, b = _views()
    loss = AdaptiveLayerMatryoshkaLoss(dims=(8,), layers=(2, 3), kl_weight=0.5, kl_temperature=0.3)
    mrl = MatryoshkaInfoNCELoss(dims=(8,))

    def probs(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.softmax(F.normalize(x, dim=-1) @ F.normalize(y, dim=-1).T / 0.3, dim=-1)

    p_t, p_s = probs(a[3], b[3]), probs(a[2], b[2])
    kl = (p_t * (p_t.log() - p_s.log())).sum(dim=-1).mean()
    expected = mrl(a[2], b[2]) + mrl(a[3], b[3]) + 0.5 * kl
    assert loss(a, b).item() == pytest.approx(expected.item(), rel=1e-5)
    assert kl.item() > 0

    # Only the KL term touches layer 3 besides its own MRL; with the MRL on layer 3 removed (layers=(2,)),
    # the last layer must get no gradient at all: it is the detached teacher.
    only_kl = AdaptiveLayerMatryoshkaLoss(dims=(8,), layers=(2,), kl_weight=1.0)
    only_kl(a, b).backward()
    assert a[3].grad is None
    assert a[2].grad is not None and a[2].grad.abs().sum() > 0


def test_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match=re.escape("layers must be strictly increasing, got [3, 2]")):
        AdaptiveLayerMatryoshkaLoss(dims=(8,), layers=(3, 2))
    with pytest.raises(ValueError, match=re.escape('layer_weighting must be "uniform", "linear"')):
        AdaptiveLayerMatryoshkaLoss(dims=(8,), layers=(1,), layer_weighting="log")
    with pytest.raises(
        ValueError, match=re.escape("layer_weighting must have one entry per layer (2), got 1")
    ):
        AdaptiveLayerMatryoshkaLoss(dims=(8,), layers=(1, 2), layer_weighting=[1.0])
    with pytest.raises(ValueError, match=re.escape("kl_weight must be finite and >= 0, got -1.0")):
        AdaptiveLayerMatryoshkaLoss(dims=(8,), layers=(1,), kl_weight=-1.0)
    with pytest.raises(ValueError, match=re.escape("kl_temperature must be > 0, got 0")):
        AdaptiveLayerMatryoshkaLoss(dims=(8,), layers=(1,), kl_temperature=0)
    a, b = _views(num_layers=2)
    with pytest.raises(ValueError, match=re.escape("layer 3 requested but the inputs hold 2 layers")):
        AdaptiveLayerMatryoshkaLoss(dims=(8,), layers=(3,))(a, b)
