"""LossBalance: the learnable balance of two losses (uncertainty weighting, or a bounded sigmoid with entropy)."""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mipic.training.losses._common import check_non_negative, check_positive

BalanceMode = Literal["uncertainty", "sigmoid", "fixed"]


class LossBalance(nn.Module):
    r"""Learnable balance of two losses (MLM first, latent second).

    ``mode="uncertainty"`` (default; Kendall, Gal & Cipolla 2018, homoscedastic uncertainty):

    .. math::

        \mathcal{L} = e^{-s_1} \mathcal{L}_1 + s_1 + e^{-s_2} \mathcal{L}_2 + s_2,
        \qquad s_i = b \tanh(u_i / b)

    with learnable :math:`u_i` (:math:`s_i` is the log-variance, softly bounded to :math:`(-b, b)`).
    For fixed losses the minimum is at :math:`s_i = \log \mathcal{L}_i`: each term is weighted by
    :math:`1/\mathcal{L}_i`, so both contribute gradients of relative size, whatever their scales
    (MLM cross-entropy starts near :math:`\log V \approx 10`, the latent loss near 0.5). The
    :math:`+s_i` terms are what stop the weights from collapsing: without them, lowering
    :math:`e^{-s_i}` would lower the loss for free. The bound :math:`b` guards the known failure of
    this scheme when a loss tends to 0 (its weight would grow without limit).

    ``mode="sigmoid"``: one logit :math:`w = b \tanh(u / b)`, :math:`\alpha = \sigma(w)`,

    .. math::

        \mathcal{L} = \alpha \mathcal{L}_1 + (1 - \alpha) \mathcal{L}_2 - \lambda H(\alpha),
        \qquad H(\alpha) = -\alpha \log \alpha - (1 - \alpha) \log (1 - \alpha)

    Without the entropy term this collapses: :math:`\partial\mathcal{L}/\partial w = \alpha(1-\alpha)
    (\mathcal{L}_1 - \mathcal{L}_2)`, so gradient descent moves all the weight onto whichever loss is
    smaller, and the minimum over :math:`\alpha` is simply :math:`\min(\mathcal{L}_1, \mathcal{L}_2)`.
    With it, :math:`\partial\mathcal{L}/\partial w = \alpha(1-\alpha)(\mathcal{L}_1 - \mathcal{L}_2 + \lambda w)`,
    whose zero is the interior point :math:`w^* = (\mathcal{L}_2 - \mathcal{L}_1)/\lambda` (clipped to
    :math:`\pm b` by the bound): the balance still leans to the smaller loss, by an amount that
    :math:`\lambda` controls, and never reaches 0 or 1 (:math:`\alpha \in (\sigma(-b), \sigma(b))`).

    ``mode="fixed"``: :math:`\mathcal{L} = \alpha \mathcal{L}_1 + (1 - \alpha)\mathcal{L}_2` with a
    constant :math:`\alpha` (``fixed_weight``), no parameter: the ablation.

    :meth:`mlm_share` is the share of the total weight on loss 1, :math:`\alpha` or
    :math:`e^{-s_1}/(e^{-s_1} + e^{-s_2})`, logged every step as the balance's trajectory.
    """

    def __init__(
        self,
        mode: BalanceMode = "uncertainty",
        *,
        bound: float = 5.0,
        entropy_weight: float = 1.0,
        fixed_weight: float = 0.5,
        init: float = 0.0,
    ) -> None:
        super().__init__()
        if mode not in ("uncertainty", "sigmoid", "fixed"):
            raise ValueError(f"balance mode must be 'uncertainty', 'sigmoid' or 'fixed', got {mode!r}")
        if not 0.0 <= fixed_weight <= 1.0:
            raise ValueError(f"fixed_weight must be in [0, 1], got {fixed_weight}")
        self.mode: BalanceMode = mode
        self.bound = check_positive("bound", bound)
        self.entropy_weight = check_non_negative("entropy_weight", entropy_weight)
        self.fixed_weight = float(fixed_weight)
        if not abs(init) < self.bound:
            raise ValueError(f"init must be inside (-bound, bound) = (-{bound}, {bound}), got {init}")
        # Raw parameter u with s = b·tanh(u/b): invert so that the bounded value starts at ``init``.
        raw = self.bound * math.atanh(init / self.bound)
        n = {"uncertainty": 2, "sigmoid": 1, "fixed": 0}[mode]
        self.raw = nn.Parameter(torch.full((n,), raw)) if n else None

    def bounded(self) -> Tensor:
        """The bounded parameters: (s_1, s_2) in uncertainty mode, (w,) in sigmoid mode."""
        if self.raw is None:
            raise ValueError("a fixed balance has no parameters")
        return self.bound * torch.tanh(self.raw / self.bound)

    def mlm_share(self) -> float:
        """Share of the total weight on the first (MLM) loss, in (0, 1)."""
        if self.mode == "fixed":
            return self.fixed_weight
        with torch.no_grad():
            p = self.bounded()
            if self.mode == "sigmoid":
                return float(torch.sigmoid(p[0]))
            return float(torch.softmax(-p, dim=0)[0])

    def forward(self, loss_1: Tensor, loss_2: Tensor) -> Tensor:
        if self.mode == "fixed":
            return self.fixed_weight * loss_1 + (1.0 - self.fixed_weight) * loss_2
        p = self.bounded()
        if self.mode == "uncertainty":
            return torch.exp(-p[0]) * loss_1 + p[0] + torch.exp(-p[1]) * loss_2 + p[1]
        w = p[0]
        alpha = torch.sigmoid(w)
        # H(σ(w)) via log-sigmoids: exact and finite for any w.
        entropy = -(alpha * F.logsigmoid(w) + (1.0 - alpha) * F.logsigmoid(-w))
        return alpha * loss_1 + (1.0 - alpha) * loss_2 - self.entropy_weight * entropy

    def terms(self) -> dict[str, float]:
        """The balance's state for the log: ``balance_mlm`` and the raw bounded parameters."""
        out = {"balance_mlm": self.mlm_share()}
        if self.mode == "uncertainty":
            s = self.bounded().detach().tolist()
            out.update({"log_var_mlm": s[0], "log_var_jepa": s[1]})
        elif self.mode == "sigmoid":
            out["balance_logit"] = float(self.bounded().detach()[0])
        return out

    def extra_repr(self) -> str:
        return f"mode={self.mode}, bound={self.bound}, entropy_weight={self.entropy_weight}"
