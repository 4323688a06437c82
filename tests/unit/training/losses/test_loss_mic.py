"""MIC regularisers: soft collapse and spectral isotropy."""

from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F

from mipic.training.losses import SoftCollapseRegularizer, SpectralIsotropyRegularizer


def test_soft_collapse_near_zero_for_independent_prefix_and_residual() -> None:
    torch.manual_seed(0)
    x = torch.randn(4096, 8)
    value = SoftCollapseRegularizer(dims=(2, 4)).forward(x).item()
    assert value < 2e-3  # E[C²] ≈ 1/B ≈ 2.4e-4


def test_soft_collapse_large_for_duplicated_columns() -> None:
    torch.manual_seed(0)
    p = torch.randn(256, 4)
    x = torch.cat([p, 3.0 * p + 1.0], dim=1)  # residual = affine copy of the prefix
    reg = SoftCollapseRegularizer(dims=(4,))
    # d = 4: C = the prefix's own correlation matrix ≈ I (4 × 4): mean(C²) ≈ 4 / 16 = 0.25, plus the
    # sampling noise of the 12 off-diagonal entries (≈ 12 / 256 / 16).
    assert reg(x).item() == pytest.approx(0.25, abs=0.01)
    assert reg(x).item() > 20 * reg(torch.randn(256, 8)).item()


def test_soft_collapse_skips_dims_without_residual_and_averages() -> None:
    torch.manual_seed(0)
    x = torch.randn(64, 6)
    reg2 = SoftCollapseRegularizer(dims=(2,))(x)
    reg4 = SoftCollapseRegularizer(dims=(4,))(x)
    both = SoftCollapseRegularizer(dims=(2, 4, 6))(x)  # 6 = D has no residual: skipped
    assert both.item() == pytest.approx(0.5 * (reg2.item() + reg4.item()), rel=1e-6)


def test_isotropy_lower_for_spread_points_than_clustered() -> None:
    torch.manual_seed(0)
    spread = torch.cat([torch.eye(4), -torch.eye(4)], dim=0)  # 8 points, cross-polytope on S^3
    spread = torch.cat([spread, torch.randn(8, 4)], dim=1)  # residual features are ignored (d = 4 < 8)
    clustered = torch.cat([torch.ones(8, 4) + 0.05 * torch.randn(8, 4), torch.randn(8, 4)], dim=1)
    reg = SpectralIsotropyRegularizer(dims=(4, 8))  # 8 = D is skipped
    v_spread, v_clustered = reg(spread).item(), reg(clustered).item()
    assert v_spread < v_clustered - 1.0
    # Hand value for the cross-polytope: for each point, 6 neighbours at ||·||² = 2 and 1 antipode at 4.
    expected = math.log((6 * math.exp(-4.0) + math.exp(-8.0)) / 7)
    assert v_spread == pytest.approx(expected, rel=1e-5)
    assert v_clustered <= 0.0


def test_isotropy_matches_reference_formula() -> None:
    torch.manual_seed(1)
    x = torch.randn(6, 5)
    u = F.normalize(x[:, :3], dim=-1)
    d2 = torch.cdist(u, u).pow(2)
    off = ~torch.eye(6, dtype=torch.bool)
    expected = torch.exp(-2.0 * d2[off]).mean().log()
    assert SpectralIsotropyRegularizer(dims=(3,), t=2.0)(x).item() == pytest.approx(expected.item(), rel=1e-5)


def test_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match=r"^dims must not be empty$"):
        SoftCollapseRegularizer(dims=())
    with pytest.raises(ValueError, match=re.escape("dims must be strictly increasing, got [4, 4]")):
        SpectralIsotropyRegularizer(dims=(4, 4))
    with pytest.raises(ValueError, match=re.escape("t must be > 0, got 0")):
        SpectralIsotropyRegularizer(dims=(4,), t=0)
    with pytest.raises(ValueError, match=re.escape("no dim in [8] is smaller than the embedding size 8")):
        SoftCollapseRegularizer(dims=(8,))(torch.randn(4, 8))
    with pytest.raises(ValueError, match=re.escape("x must be (B, D) with B >= 2, got shape (1, 8)")):
        SpectralIsotropyRegularizer(dims=(4,))(torch.randn(1, 8))
