"""LatentPredictionLoss: smooth-L1 or cosine distance between predicted and target latents, and the target
itself (:func:`layer_norm_targets`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mipic.training.losses._common import check_positive

LatentLossKind = Literal["smooth_l1", "cosine"]


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
