"""PIC: progressive information chaining."""

from __future__ import annotations

import re

import pytest
import torch

from mipic.training.losses import PICLoss, info_nce, truncate_normalize


def _pooled(num_layers: int = 3, batch: int = 5, size: int = 8, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, size, generator=g).requires_grad_() for _ in range(num_layers + 1)]


def test_value_matches_definition() -> None:
    a, b = _pooled(seed=0), _pooled(seed=1)
    torch.manual_seed(0)
    pic = PICLoss([(2, 1), (4, 2), (8, 3)], projector_hidden=6, temperature=0.1)
    expected = 0.5 * (
        info_nce(pic.projectors[0](truncate_normalize(a[1], 2)), truncate_normalize(b[2], 4), 0.1)
        + info_nce(pic.projectors[1](truncate_normalize(a[2], 4)), truncate_normalize(b[3], 8), 0.1)
    )
    assert pic(a, b).item() == pytest.approx(expected.item(), rel=1e-6)
    assert pic.projectors[0][0].out_features == 6


def test_gradients_stop_at_the_deeper_side() -> None:
    a, b = _pooled(seed=0), _pooled(seed=1)
    pic = PICLoss([(4, 1), (8, 3)])
    pic(a, b).backward()
    assert a[1].grad is not None and a[1].grad.abs().sum() > 0  # shallower side learns
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in pic.parameters())  # projector learns
    assert b[3].grad is None  # deeper target: stop-gradient
    assert a[3].grad is None  # view a's deep side is not used as a query either
    assert all(t.grad is None for t in b)


def test_same_view_targets_are_detached_too() -> None:
    a = _pooled()
    pic = PICLoss([(4, 1), (8, 2)])
    pic(a).backward()
    assert a[1].grad is not None and a[1].grad.abs().sum() > 0
    assert a[2].grad is None


def test_progressive_switching_counts_active_steps() -> None:
    pic = PICLoss([(2, 1), (4, 1), (4, 2), (8, 3)], progressive=True)  # 3 steps
    assert pic.num_steps == 3
    seen = []
    for fraction in (0.0, 0.2, 1 / 3, 0.5, 2 / 3, 0.9, 1.0):
        pic.set_progress(fraction)
        seen.append(pic.num_active_steps)
    assert seen == [1, 1, 2, 2, 3, 3, 3]
    # Only active steps contribute: at the start only the first projector gets gradients.
    pic.set_progress(0.0)
    a, b = _pooled(), _pooled(seed=1)
    pic(a, b).backward()
    grads = [any(p.grad is not None for p in proj.parameters()) for proj in pic.projectors]
    assert grads == [True, False, False]
    # Non-progressive: always all steps.
    assert PICLoss([(2, 1), (4, 2), (8, 3)]).num_active_steps == 2


def test_rejects_bad_chains_and_arguments() -> None:
    with pytest.raises(ValueError, match=re.escape("chain must have at least 2 checkpoints, got 1")):
        PICLoss([(8, 2)])
    with pytest.raises(
        ValueError,
        match=re.escape("chain must be non-decreasing in both dim and layer, got [(4, 2), (8, 1)]"),
    ):
        PICLoss([(4, 2), (8, 1)])
    with pytest.raises(
        ValueError,
        match=re.escape("chain must be non-decreasing in both dim and layer, got [(8, 1), (4, 2)]"),
    ):
        PICLoss([(8, 1), (4, 2)])
    with pytest.raises(
        ValueError, match=re.escape("chain must not repeat a checkpoint, got [(4, 1), (4, 1)]")
    ):
        PICLoss([(4, 1), (4, 1)])
    with pytest.raises(ValueError, match="chain checkpoints must be positive integer"):
        PICLoss([(0, 1), (4, 2)])
    with pytest.raises(
        ValueError, match=re.escape("projector_hidden must be a positive integer or None, got 0")
    ):
        PICLoss([(4, 1), (8, 2)], projector_hidden=0)
    pic = PICLoss([(4, 1), (8, 2)], progressive=True)
    with pytest.raises(ValueError, match=re.escape("fraction must be in [0, 1], got 1.5")):
        pic.set_progress(1.5)
    with pytest.raises(ValueError, match=re.escape("chain reaches layer 2 but the inputs hold 1 layers")):
        pic(_pooled(num_layers=1))
