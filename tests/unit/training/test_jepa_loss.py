"""JEPA pieces on hand-checkable tensors: targets, predictor, latent loss, the balance (gradient, range,
stationary points, the collapse it prevents) and the EMA rule."""

from __future__ import annotations

import math
import re

import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402

from mipic.training.losses import (  # noqa: E402
    JEPAPredictor,
    LatentPredictionLoss,
    LossBalance,
    MLMJEPALoss,
    ema_update,
    layer_norm_targets,
)

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def test_layer_norm_targets_normalise_each_token_and_average_layers() -> None:
    torch.manual_seed(0)
    a = torch.randn(5, 8) * 7 + 3
    y = layer_norm_targets([a])
    assert torch.allclose(y.mean(-1), torch.zeros(5), atol=1e-5)
    assert torch.allclose(y.var(-1, unbiased=False), torch.ones(5), atol=1e-3)
    b = torch.randn(5, 8)
    both = layer_norm_targets([a, b])
    assert torch.allclose(both, (layer_norm_targets([a]) + layer_norm_targets([b])) / 2)
    with pytest.raises(ValueError, match="at least one layer"):
        layer_norm_targets([])


def test_smooth_l1_and_cosine_by_hand() -> None:
    target = torch.zeros(3, 4)
    sl1 = LatentPredictionLoss("smooth_l1", beta=1.0)
    assert sl1(torch.full((3, 4), 0.5), target).item() == pytest.approx(0.125)  # 0.5² / 2
    assert sl1(torch.full((3, 4), 2.0), target).item() == pytest.approx(1.5)  # |2| − 1/2
    cos = LatentPredictionLoss("cosine")
    e1, e2 = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 3.0]])
    assert cos(e1, e2).item() == pytest.approx(1.0)
    assert cos(e1 * 5, e1).item() == pytest.approx(0.0, abs=1e-6)
    assert cos(-e1, e1).item() == pytest.approx(2.0)
    with pytest.raises(ValueError, match=re.escape("latent loss must be 'smooth_l1' or 'cosine', got 'l2'")):
        LatentPredictionLoss("l2")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="pred and target must both be"):
        sl1(torch.zeros(3, 4), torch.zeros(3, 5))


@pytest.mark.parametrize("kind", ["mlp", "transformer"])
def test_predictor_predicts_masked_rows_only(kind: str) -> None:
    torch.manual_seed(0)
    pred = JEPAPredictor(16, kind, depth=2, width=8, num_heads=2).eval()  # type: ignore[arg-type]
    hidden = torch.randn(2, 5, 16)
    attn = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    pos = torch.tensor([[0, 1, 1, 0, 0], [0, 0, 1, 0, 0]], dtype=torch.bool)
    out = pred(hidden, attn, pos)
    assert out.shape == (3, 16)
    # Padding is invisible: changing padded states does not change any prediction.
    changed = hidden.clone()
    changed[1, 3:] = 100.0
    assert torch.allclose(pred(changed, attn, pos), out, atol=1e-5)


def test_predictor_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match=re.escape("predictor kind must be 'mlp' or 'transformer', got 'rnn'")):
        JEPAPredictor(16, "rnn")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="predictor depth must be >= 1, got 0"):
        JEPAPredictor(16, depth=0)
    with pytest.raises(ValueError, match="predictor width 10 is not divisible by num_heads 4"):
        JEPAPredictor(16, "transformer", width=10, num_heads=4)


def _fit_balance(
    balance: LossBalance, l1: float, l2: float, steps: int = 200, lr: float = 0.3, adam: bool = False
) -> None:
    """Optimise only the balance against constant losses."""
    opt = torch.optim.Adam(balance.parameters(), lr=lr) if adam else torch.optim.SGD(balance.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        balance(torch.tensor(l1), torch.tensor(l2)).backward()
        opt.step()


def test_uncertainty_balance_gets_gradient_and_settles_at_log_losses() -> None:
    balance = LossBalance("uncertainty")
    total = balance(torch.tensor(8.0), torch.tensor(0.5))
    assert total.item() == pytest.approx(8.5)  # s = 0: plain sum
    total.backward()
    assert balance.raw is not None and balance.raw.grad is not None
    assert torch.all(balance.raw.grad != 0)
    assert balance.mlm_share() == pytest.approx(0.5)
    _fit_balance(balance, 8.0, 0.5)
    s = balance.bounded().detach()
    # Stationary point of e^{-s} L + s: s = log L, i.e. each loss weighted by 1/L.
    assert s[0].item() == pytest.approx(math.log(8.0), abs=0.05)
    assert s[1].item() == pytest.approx(math.log(0.5), abs=0.05)
    assert balance.mlm_share() == pytest.approx(0.5 / 8.5, abs=0.01)
    assert set(balance.terms()) == {"balance_mlm", "log_var_mlm", "log_var_jepa"}


def test_sigmoid_balance_without_regulariser_collapses_onto_the_smaller_loss() -> None:
    balance = LossBalance("sigmoid", entropy_weight=0.0, bound=5.0)
    _fit_balance(balance, 1.0, 0.6, lr=0.5, adam=True)
    # All the weight runs to the smaller (second) loss; only the bound keeps it off exactly 0.
    assert balance.mlm_share() < 0.01
    assert balance.mlm_share() >= 1 / (1 + math.exp(5.0)) - 1e-9


def test_sigmoid_balance_with_entropy_settles_inside() -> None:
    balance = LossBalance("sigmoid", entropy_weight=1.0)
    total = balance(torch.tensor(1.0), torch.tensor(0.6))
    # w = 0: 0.5·1 + 0.5·0.6 − log 2
    assert total.item() == pytest.approx(0.8 - math.log(2))
    total.backward()
    assert balance.raw is not None and balance.raw.grad is not None and balance.raw.grad.item() != 0
    _fit_balance(balance, 1.0, 0.6, lr=2.0)
    # Stationary point w* = (L2 − L1) / λ = −0.4.
    assert balance.bounded().item() == pytest.approx(-0.4, abs=0.02)
    assert balance.mlm_share() == pytest.approx(1 / (1 + math.exp(0.4)), abs=0.01)


def test_balance_stays_in_range_whatever_the_raw_parameter() -> None:
    for mode in ("sigmoid", "uncertainty"):
        balance = LossBalance(mode, bound=3.0)  # type: ignore[arg-type]
        assert balance.raw is not None
        with torch.no_grad():
            balance.raw.fill_(1e6)
        assert torch.all(balance.bounded().abs() <= 3.0)
        assert 0.0 < balance.mlm_share() < 1.0
        with torch.no_grad():
            balance.raw.fill_(-1e6)
        assert torch.isfinite(balance(torch.tensor(2.0), torch.tensor(1.0)))
        assert 0.0 < balance.mlm_share() < 1.0


def test_fixed_balance_and_argument_checks() -> None:
    balance = LossBalance("fixed", fixed_weight=0.25)
    assert list(balance.parameters()) == []
    assert balance(torch.tensor(4.0), torch.tensor(8.0)).item() == pytest.approx(7.0)
    assert balance.terms() == {"balance_mlm": 0.25}
    with pytest.raises(ValueError, match="balance mode must be"):
        LossBalance("softmax")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=re.escape("init must be inside (-bound, bound)")):
        LossBalance("sigmoid", bound=2.0, init=2.0)
    with pytest.raises(ValueError, match="fixed_weight must be in"):
        LossBalance("fixed", fixed_weight=1.5)
    assert LossBalance("sigmoid", init=1.0).bounded().item() == pytest.approx(1.0)


def test_mlm_jepa_loss_terms_and_gradients() -> None:
    torch.manual_seed(0)
    loss = MLMJEPALoss(JEPAPredictor(8, depth=1), LatentPredictionLoss(), LossBalance("uncertainty"))
    context = torch.randn(2, 4, 8, requires_grad=True)
    attn = torch.ones(2, 4, dtype=torch.long)
    pos = torch.tensor([[0, 1, 0, 0], [0, 1, 1, 0]], dtype=torch.bool)
    target = torch.randn(2, 4, 8, requires_grad=True)
    mlm = torch.tensor(3.0, requires_grad=True)
    out = loss(mlm, context, attn, pos, [target])
    assert set(out.terms) == {"mlm", "jepa", "balance_mlm", "log_var_mlm", "log_var_jepa", "total"}
    assert out.terms["total"] == pytest.approx(out.terms["mlm"] + out.terms["jepa"])  # s = 0
    out.loss.backward()
    assert context.grad is not None and mlm.grad is not None
    assert target.grad is None  # targets are stop-gradient


def test_ema_update_is_a_lerp_and_copies_buffers() -> None:
    torch.manual_seed(0)
    online = nn.BatchNorm1d(3)
    target = nn.BatchNorm1d(3)
    target.requires_grad_(False)
    with torch.no_grad():
        online.weight.fill_(2.0)
        target.weight.fill_(0.0)
    online.running_mean.fill_(5.0)
    ema_update(target, online, 0.75)
    assert torch.allclose(target.weight, torch.full((3,), 0.5))  # 0.75·0 + 0.25·2
    assert torch.equal(target.running_mean, online.running_mean)
    with pytest.raises(ValueError, match="decay must be in"):
        ema_update(target, online, 1.5)
