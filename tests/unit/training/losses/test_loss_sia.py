"""SIA: linear CKA, attention-relation KL, top-k CKA."""

from __future__ import annotations

import itertools
import re

import pytest
import torch

from mipic.training.losses import SIALoss, linear_cka, masked_kl


def _feature_form_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    xc = (x - x.mean(0)).double()
    yc = (y - y.mean(0)).double()
    num = (yc.T @ xc).pow(2).sum()
    den = (xc.T @ xc).norm() * (yc.T @ yc).norm()
    return float(num / den)


# --------------------------------------------------------------------------- linear CKA


def test_cka_of_matrix_with_itself_is_one() -> None:
    torch.manual_seed(0)
    x = torch.randn(10, 4)
    assert linear_cka(x, x).item() == pytest.approx(1.0, abs=1e-6)


def test_cka_invariant_to_orthogonal_transform_and_isotropic_scaling() -> None:
    torch.manual_seed(1)
    x = torch.randn(12, 5)
    y = x @ torch.randn(5, 7) + 0.5 * torch.randn(12, 7)  # related but not identical
    q, _ = torch.linalg.qr(torch.randn(5, 5))  # orthogonal
    base = linear_cka(x, y).item()
    assert 0.2 < base < 0.99
    assert linear_cka(x @ q, y).item() == pytest.approx(base, rel=1e-6)
    assert linear_cka(3.7 * x, 0.01 * y).item() == pytest.approx(base, rel=1e-6)
    assert linear_cka(x @ q * 0.2, y * 5.0).item() == pytest.approx(base, rel=1e-6)
    # A generic (non-orthogonal) invertible map does change it: the invariance test can fail.
    skew = torch.eye(5) + 3.0 * torch.triu(torch.ones(5, 5), diagonal=1)
    assert abs(linear_cka(x @ skew, y).item() - base) > 1e-3


def test_cka_of_independent_random_matrices_is_small() -> None:
    torch.manual_seed(2)
    x, y = torch.randn(500, 4), torch.randn(500, 4)
    assert linear_cka(x, y).item() < 0.05


def test_cka_gram_and_feature_forms_agree_with_reference() -> None:
    torch.manual_seed(3)
    few_rows = (torch.randn(6, 9), torch.randn(6, 11))  # n <= max(p, q): Gram form
    many_rows = (torch.randn(40, 3), torch.randn(40, 5))  # n > max(p, q): feature form
    for x, y in (few_rows, many_rows):
        assert linear_cka(x, y).item() == pytest.approx(_feature_form_cka(x, y), rel=1e-6)


def test_cka_row_mask_equals_dropping_rows_and_is_batched() -> None:
    torch.manual_seed(4)
    x, y = torch.randn(2, 8, 3), torch.randn(2, 8, 6)
    mask = torch.tensor([[True] * 5 + [False] * 3, [True] * 8])
    got = linear_cka(x, y, row_mask=mask)
    assert got.shape == (2,)
    assert got[0].item() == pytest.approx(_feature_form_cka(x[0, :5], y[0, :5]), rel=1e-6)
    assert got[1].item() == pytest.approx(_feature_form_cka(x[1], y[1]), rel=1e-6)


def test_cka_degenerate_input_is_zero_with_finite_gradient() -> None:
    x = torch.randn(1, 3, requires_grad=True)  # one row: nothing left after centring
    out = linear_cka(x, torch.randn(1, 4))
    out.backward()
    assert out.item() == 0.0
    assert x.grad is not None and torch.isfinite(x.grad).all()


# --------------------------------------------------------------------------- masked KL


def test_masked_kl_ignores_masked_entries_and_has_no_nan_gradient() -> None:
    p = torch.tensor([[1.0, 2.0, 50.0], [0.0, 0.0, 0.0]], requires_grad=True)
    q = torch.tensor([[1.0, 2.0, -50.0], [0.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, False], [False, False, False]])
    kl = masked_kl(p, q, mask)
    assert torch.allclose(kl, torch.zeros(2), atol=1e-7)  # equal on the kept entries; empty row → 0
    kl.sum().backward()
    assert p.grad is not None and torch.isfinite(p.grad).all()


# --------------------------------------------------------------------------- SIA


def _states(
    batch: int = 3, tokens: int = 10, size: int = 8, layers: int = 2, seed: int = 0
) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, tokens, size, generator=g) for _ in range(layers + 1)]


def test_attention_kl_zero_when_student_equals_teacher() -> None:
    hs = _states()
    mask = torch.ones(3, 10, dtype=torch.long)
    mask[0, 7:] = 0
    # d = D and P initialised to the identity: the student scores are the teacher scores.
    full = SIALoss(hidden_size=8, dims=(8,), layers=(1, 2), cka_weight=0.0)
    assert torch.equal(full.projection(1, 8).weight, torch.eye(8))
    attn, _ = full.components(hs, mask)
    assert attn.item() == pytest.approx(0.0, abs=1e-6)
    # Any other student gives a positive KL, in both directions.
    for direction in ("student_teacher", "teacher_student"):
        prefix = SIALoss(hidden_size=8, dims=(4,), layers=(1, 2), cka_weight=0.0, kl_direction=direction)
        assert prefix.components(hs, mask)[0].item() > 1e-3
    with torch.no_grad():
        full.projection(1, 8).weight.mul_(1.5)  # change P: no longer the teacher
    assert full.components(hs, mask)[0].item() > 1e-3


def test_kl_direction_option_computes_the_stated_direction() -> None:
    hs = _states(batch=1, layers=1)
    mask = torch.ones(1, 10, dtype=torch.long)
    loss = SIALoss(hidden_size=8, dims=(4,), layers=(1,), cka_weight=0.0, attn_temperature=2.0)
    h = hs[1]
    t = torch.einsum("be,bte->bt", h[:, 0], h)[:, 1:] / 8**0.5 / 2.0  # keys exclude CLS by default
    s = torch.einsum("be,bte->bt", h[:, 0, :4], h[..., :4])[:, 1:] / 8**0.5 / 2.0  # P = [I; 0]
    log_t, log_s = t.log_softmax(-1), s.log_softmax(-1)
    kl_st = (log_s.exp() * (log_s - log_t)).sum()
    kl_ts = (log_t.exp() * (log_t - log_s)).sum()
    assert loss.components(hs, mask)[0].item() == pytest.approx(kl_st.item(), rel=1e-5)
    loss_ts = SIALoss(8, (4,), (1,), cka_weight=0.0, attn_temperature=2.0, kl_direction="teacher_student")
    assert loss_ts.components(hs, mask)[0].item() == pytest.approx(kl_ts.item(), rel=1e-5)
    assert abs(kl_st.item() - kl_ts.item()) > 1e-4


def test_topk_formula_and_nesting() -> None:
    loss = SIALoss(hidden_size=10, dims=(2, 5, 10), layers=(1,), k_min=2, gamma_min=0.1, gamma_max=0.5)
    assert loss.gamma(5) == pytest.approx(0.3)
    t_valid = torch.tensor([0, 1, 4, 10, 20, 33])
    # γ_5 = 0.3: ceil(0.3 T) → 0, 1, 2, 3, 6, 10; then max with k_min=2, min with T
    assert loss.num_topk(5, t_valid).tolist() == [0, 1, 2, 3, 6, 10]
    assert loss.num_topk(10, t_valid).tolist() == [0, 1, 2, 5, 10, 17]  # γ = 0.5
    assert loss.num_topk(2, t_valid).tolist() == [0, 1, 2, 2, 4, 6]  # γ = 0.18: 3.6 → 4, 5.94 → 6
    # Nested: k never shrinks as d grows (the ranking is shared, so the kept sets are prefixes of it).
    ts = torch.arange(0, 300)
    ks = [loss.num_topk(d, ts) for d in loss.dims]
    assert all(bool((k1 <= k2).all()) for k1, k2 in itertools.pairwise(ks))


def test_topk_cka_is_zero_when_prefix_is_the_whole_state() -> None:
    hs = _states()
    mask = torch.ones(3, 10, dtype=torch.long)
    loss = SIALoss(hidden_size=8, dims=(4, 8), layers=(1,), attn_weight=0.0, k_min=3)
    _, cka = loss.components(hs, mask)
    # Averaged over d = 4 (CKA < 1) and d = 8 (CKA = 1 → loss 0).
    only_full = SIALoss(hidden_size=8, dims=(8,), layers=(1,), attn_weight=0.0, k_min=3)
    assert only_full.components(hs, mask)[1].item() == pytest.approx(0.0, abs=1e-6)
    assert cka.item() > 1e-3


def test_padding_does_not_change_the_loss() -> None:
    hs = _states(batch=3, tokens=9)
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[1, 6:] = 0  # already some padding
    loss = SIALoss(hidden_size=8, dims=(2, 4, 6), layers=(1, 2), k_min=2, gamma_min=0.2, gamma_max=0.6)
    with torch.no_grad():  # non-trivial P so that the student uses every parameter
        for p in loss.parameters():
            p.add_(0.3 * torch.randn_like(p))
    attn, cka = loss.components(hs, mask)
    # Append 5 padded tokens with large random states: masked out, they must not matter.
    pad = [torch.cat([h, 10.0 * torch.randn(3, 5, 8)], dim=1) for h in hs]
    pad_mask = torch.cat([mask, torch.zeros(3, 5, dtype=torch.long)], dim=1)
    attn_p, cka_p = loss.components(pad, pad_mask)
    assert attn.item() > 1e-3 and cka.item() > 1e-3
    assert attn_p.item() == pytest.approx(attn.item(), rel=1e-5)
    assert cka_p.item() == pytest.approx(cka.item(), rel=1e-5)
    # Changing a real token does change it (the test can fail).
    hs2 = [h.clone() for h in hs]
    hs2[1][0, 3] += 5.0
    assert loss.components(hs2, mask)[1].item() != pytest.approx(cka.item(), rel=1e-5)


def test_teacher_is_detached_gradients_reach_prefix_and_projection_only() -> None:
    hs = [h.requires_grad_() for h in _states()]
    mask = torch.ones(3, 10, dtype=torch.long)
    loss = SIALoss(hidden_size=8, dims=(4,), layers=(2,), k_min=3)
    loss(hs, mask).backward()
    grad = hs[2].grad
    assert grad is not None
    assert grad[..., :4].abs().sum() > 0
    # The full state enters only as the detached teacher: no gradient beyond the prefix.
    assert torch.equal(grad[..., 4:], torch.zeros_like(grad[..., 4:]))
    assert hs[1].grad is None
    assert loss.projection(2, 4).weight.grad is not None


def test_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match=re.escape("hidden_size must be a positive integer, got 0")):
        SIALoss(hidden_size=0, dims=(4,), layers=(1,))
    with pytest.raises(ValueError, match=re.escape("dims must be <= hidden_size (8), got [4, 16]")):
        SIALoss(hidden_size=8, dims=(4, 16), layers=(1,))
    with pytest.raises(ValueError, match=r"^layers must not be empty$"):
        SIALoss(hidden_size=8, dims=(4,), layers=())
    with pytest.raises(ValueError, match=re.escape("k_min must be an integer >= 1, got 0")):
        SIALoss(hidden_size=8, dims=(4,), layers=(1,), k_min=0)
    with pytest.raises(
        ValueError,
        match=re.escape("gamma range must satisfy 0 < gamma_min <= gamma_max <= 1, got (0.6, 0.5)"),
    ):
        SIALoss(hidden_size=8, dims=(4,), layers=(1,), gamma_min=0.6, gamma_max=0.5)
    with pytest.raises(ValueError, match=re.escape("attn_temperature must be > 0, got 0.0")):
        SIALoss(hidden_size=8, dims=(4,), layers=(1,), attn_temperature=0.0)
    with pytest.raises(ValueError, match=re.escape("cka_weight must be finite and >= 0, got -1.0")):
        SIALoss(hidden_size=8, dims=(4,), layers=(1,), cka_weight=-1.0)
    with pytest.raises(ValueError, match='kl_direction must be "student_teacher" or "teacher_student"'):
        SIALoss(hidden_size=8, dims=(4,), layers=(1,), kl_direction="both")
    with pytest.raises(ValueError, match=re.escape("layer 3 requested but hidden_states holds 2 layers")):
        SIALoss(hidden_size=8, dims=(4,), layers=(3,))(_states(), torch.ones(3, 10))
