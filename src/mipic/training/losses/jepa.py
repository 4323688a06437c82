"""MLM + JEPA hybrid pretraining objective: latent prediction of an EMA target, balanced against MLM.

Pieces, each usable on its own:

* :func:`layer_norm_targets` — the regression target: layer-normalised states of the EMA target encoder.
* :class:`JEPAPredictor` — maps the context encoder's states to predictions at the masked positions.
* :class:`LatentPredictionLoss` — smooth-L1 or cosine distance between predictions and targets.
* :class:`LossBalance` — the learnable balance between the MLM and the latent loss.
* :class:`MLMJEPALoss` — all of the above, given the MLM loss and both encoders' states.
* :func:`ema_update` — the target encoder's only update rule.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mipic.training.losses._common import LossOutput, check_non_negative, check_positive

PredictorKind = Literal["mlp", "transformer"]
LatentLossKind = Literal["smooth_l1", "cosine"]
BalanceMode = Literal["uncertainty", "sigmoid", "fixed"]


def layer_norm_targets(states: Sequence[Tensor], eps: float = 1e-5) -> Tensor:
    r"""Average of the per-token layer-normalised states: K tensors (..., H) → (..., H).

    .. math:: y = \frac{1}{K} \sum_{k=1}^{K} \mathrm{LN}(h^{(L-k+1)}), \qquad
              \mathrm{LN}(h) = \frac{h - \mu(h)}{\sqrt{\sigma^2(h) + \epsilon}} \ \text{(no affine)}

    Normalising each token's target to zero mean and unit variance over features (I-JEPA; data2vec
    averages the top K layers the same way) removes the trivial solution of shrinking the target's
    scale and puts the latent loss on a fixed scale (~1 for an uninformed prediction), independent
    of the encoder's activation magnitudes.
    """
    if not states:
        raise ValueError("need at least one layer of target states")
    normed = [F.layer_norm(s.float(), s.shape[-1:], eps=eps) for s in states]
    return torch.stack(normed).mean(dim=0)


class JEPAPredictor(nn.Module):
    r"""Predicts the target encoder's (normalised) states at the masked positions.

    ``kind="mlp"``: a per-token MLP :math:`H \to d \to \dots \to H` with ``depth`` hidden layers (GELU).
    It sees only the context state at the masked position, which already carries that position's
    embedding and attended to the whole (corrupted) sentence.

    ``kind="transformer"``: :math:`H \to d`, ``depth`` pre-LN transformer layers over the whole
    sequence (padding masked out), LayerNorm, :math:`d \to H`; the predictor can then re-read the
    context around each masked span, as in I-JEPA's narrow predictor.

    Inputs:
        hidden: (B, T, H) context-encoder states.
        attention_mask: (B, T), 1 = real token.
        positions: (B, T) bool, the masked positions to predict.

    Returns:
        (M, H) predictions, M = ``positions.sum()``, in row-major (batch, token) order.
    """

    def __init__(
        self,
        hidden_size: int,
        kind: PredictorKind = "mlp",
        depth: int = 1,
        width: int | None = None,
        num_heads: int = 4,
    ) -> None:
        super().__init__()
        if kind not in ("mlp", "transformer"):
            raise ValueError(f"predictor kind must be 'mlp' or 'transformer', got {kind!r}")
        if depth < 1:
            raise ValueError(f"predictor depth must be >= 1, got {depth}")
        width = hidden_size if width is None else width
        if width < 1:
            raise ValueError(f"predictor width must be >= 1, got {width}")
        if kind == "transformer" and width % num_heads:
            raise ValueError(f"predictor width {width} is not divisible by num_heads {num_heads}")
        self.kind: PredictorKind = kind
        self.depth = depth
        self.width = width
        self.inp = nn.Linear(hidden_size, width)
        self.out = nn.Linear(width, hidden_size)
        self.mlp: nn.Sequential | None = None
        self.blocks: nn.TransformerEncoder | None = None
        self.norm: nn.LayerNorm | None = None
        if kind == "mlp":
            layers: list[nn.Module] = [nn.GELU()]
            for _ in range(depth - 1):
                layers += [nn.Linear(width, width), nn.GELU()]
            self.mlp = nn.Sequential(*layers)
        else:
            layer = nn.TransformerEncoderLayer(
                width, num_heads, dim_feedforward=4 * width, dropout=0.0, activation="gelu",
                batch_first=True, norm_first=True,
            )  # fmt: skip
            self.blocks = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
            self.norm = nn.LayerNorm(width)

    def forward(self, hidden: Tensor, attention_mask: Tensor, positions: Tensor) -> Tensor:
        if hidden.dim() != 3 or positions.shape != hidden.shape[:2] or attention_mask.shape != hidden.shape[:2]:
            raise ValueError(
                f"need hidden (B, T, H) with attention_mask and positions (B, T), got {tuple(hidden.shape)}, "
                f"{tuple(attention_mask.shape)}, {tuple(positions.shape)}"
            )
        if self.mlp is not None:
            # Per token: run only the masked rows (15% of the tokens).
            return self.out(self.mlp(self.inp(hidden[positions])))  # (M, H)
        assert self.blocks is not None and self.norm is not None
        x = self.blocks(self.inp(hidden), src_key_padding_mask=~attention_mask.bool())  # (B, T, d)
        return self.out(self.norm(x[positions]))  # (M, H)

    def extra_repr(self) -> str:
        return f"kind={self.kind}, depth={self.depth}, width={self.width}"


class LatentPredictionLoss(nn.Module):
    r"""Distance between predicted and target latents, averaged over the masked tokens.

    .. math::

        \mathcal{L}_{\mathrm{smooth\_l1}} = \frac{1}{M H} \sum_{m, h} \ell_\beta(\hat y_{mh} - y_{mh}),
        \quad \ell_\beta(u) = \begin{cases} u^2 / (2\beta) & |u| < \beta \\ |u| - \beta/2 & \text{else}\end{cases}

        \mathcal{L}_{\mathrm{cosine}} = \frac{1}{M} \sum_m \big(1 - \cos(\hat y_m, y_m)\big)

    Inputs:
        pred: (M, H) predictions; target: (M, H), already normalised (:func:`layer_norm_targets`) and
        detached (the target encoder gets no gradient).

    Reference: Baevski et al. 2022, "data2vec" (smooth-L1 on averaged, normalised teacher layers);
    Assran et al. 2023, "I-JEPA" (latent prediction from an EMA target encoder).
    """

    def __init__(self, kind: LatentLossKind = "smooth_l1", beta: float = 1.0) -> None:
        super().__init__()
        if kind not in ("smooth_l1", "cosine"):
            raise ValueError(f"latent loss must be 'smooth_l1' or 'cosine', got {kind!r}")
        self.kind: LatentLossKind = kind
        self.beta = check_positive("beta", beta)

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        if pred.shape != target.shape or pred.dim() != 2:
            raise ValueError(f"pred and target must both be (M, H), got {tuple(pred.shape)} and {tuple(target.shape)}")
        pred = pred.float()
        if self.kind == "cosine":
            return (1.0 - F.cosine_similarity(pred, target, dim=-1)).mean()
        return F.smooth_l1_loss(pred, target, beta=self.beta)

    def extra_repr(self) -> str:
        return f"kind={self.kind}, beta={self.beta}"


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


class MLMJEPALoss(nn.Module):
    r"""The hybrid objective: masked-token cross-entropy plus latent prediction of an EMA target.

    .. math::

        \mathcal{L}_{\mathrm{MLM}} = -\frac{1}{|M|}\sum_{i \in M} \log p_\theta(x_i \mid \tilde x),
        \qquad
        \mathcal{L}_{\mathrm{JEPA}} = \frac{1}{|M|}\sum_{i \in M}
            d\big(g_\phi(f_\theta(\tilde x))_i,\ \mathrm{sg}\,\mathrm{LN}(f_{\bar\theta}(x))_i\big)

        \mathcal{L} = \mathrm{Balance}(\mathcal{L}_{\mathrm{MLM}}, \mathcal{L}_{\mathrm{JEPA}})

    :math:`\tilde x` is the span-masked input, :math:`x` the clean one, :math:`M` the masked positions,
    :math:`f_\theta` the context encoder, :math:`f_{\bar\theta}` its EMA copy (no gradient,
    :func:`ema_update`), :math:`g_\phi` the :class:`JEPAPredictor`, :math:`d` the
    :class:`LatentPredictionLoss` and Balance the :class:`LossBalance`. The MLM term anchors the
    context encoder to the tokens, which is what keeps the latent term from collapsing to a constant
    representation; the latent term asks the masked positions to predict the clean sentence's
    *contextual* states, which spreads the sentence representations out (the reported effect of the
    hybrid is better uniformity than MLM alone).

    Inputs:
        mlm_loss: scalar, the cross-entropy over the masked tokens (computed by the MLM head's owner).
        context: (B, T, H) context-encoder states of the masked input.
        attention_mask: (B, T).
        positions: (B, T) bool, masked positions.
        target_states: K tensors (B, T, H) of the target encoder's top K layers on the clean input.

    Returns:
        :class:`LossOutput`: ``loss`` and terms ``mlm``, ``jepa``, ``balance_mlm`` (+ the balance's
        parameters) and ``total``.
    """

    def __init__(self, predictor: JEPAPredictor, latent: LatentPredictionLoss, balance: LossBalance) -> None:
        super().__init__()
        self.predictor = predictor
        self.latent = latent
        self.balance = balance

    def forward(
        self,
        mlm_loss: Tensor,
        context: Tensor,
        attention_mask: Tensor,
        positions: Tensor,
        target_states: Sequence[Tensor],
    ) -> LossOutput:
        with torch.no_grad():
            target = layer_norm_targets([t[positions] for t in target_states])  # (M, H)
        pred = self.predictor(context, attention_mask, positions)  # (M, H)
        jepa = self.latent(pred, target)
        total = self.balance(mlm_loss, jepa)
        values = torch.stack([mlm_loss.detach().float(), jepa.detach(), total.detach().float()]).tolist()
        terms = {"mlm": values[0], "jepa": values[1], **self.balance.terms(), "total": values[2]}
        return LossOutput(loss=total, terms=terms)


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, decay: float) -> None:
    r""":math:`\bar\theta \leftarrow \tau \bar\theta + (1 - \tau)\theta` for every parameter; buffers are copied.

    The target's parameters must not require gradients: this is their only update.
    """
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"decay must be in [0, 1], got {decay}")
    t_params = list(target.parameters())
    o_params = list(online.parameters())
    if len(t_params) != len(o_params):
        raise ValueError(f"target has {len(t_params)} parameter tensors, online has {len(o_params)}")
    for t, o in zip(t_params, o_params, strict=True):
        t.lerp_(o.detach().to(t.dtype), 1.0 - decay)
    for tb, ob in zip(target.buffers(), online.buffers(), strict=True):
        tb.copy_(ob)
