"""InfoNCE with in-batch negatives (SimCSE when the two views are two dropout passes)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mipic.training.losses._common import check_positive, cosine_logits


def info_nce(a: Tensor, b: Tensor, temperature: float, symmetric: bool = False) -> Tensor:
    """Functional form of :class:`InfoNCELoss`; ``a``, ``b`` (B, D) with positives on the diagonal."""
    if a.dim() != 2 or a.shape != b.shape:
        raise ValueError(
            f"a and b must both be (B, D) with equal shapes, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    logits = cosine_logits(a, b, temperature)  # (B, B): row i scores a_i against every b_j
    labels = torch.arange(a.shape[0], device=a.device)
    loss = F.cross_entropy(logits, labels)
    if symmetric:
        # b_i → a: column i of the same matrix, i.e. the transposed logits.
        loss = 0.5 * (loss + F.cross_entropy(logits.T, labels))
    return loss


class InfoNCELoss(nn.Module):
    r"""InfoNCE / NT-Xent with in-batch negatives.

    .. math::

        \mathcal{L} = -\frac{1}{B}\sum_{i=1}^{B}
            \log \frac{\exp(\cos(a_i, b_i)/\tau)}{\sum_{j=1}^{B} \exp(\cos(a_i, b_j)/\tau)}

    With ``symmetric=True`` the loss is the mean of the a→b and b→a directions (the b→a direction uses
    the columns of the same similarity matrix).

    Inputs:
        a: (B, D) anchors.
        b: (B, D) positives; ``b[i]`` is the positive of ``a[i]``, every other row is a negative.
        For unsupervised SimCSE, ``a`` and ``b`` are two forward passes of the same batch under
        different dropout masks.

    Returns:
        scalar tensor.

    References:
        - van den Oord et al. 2018, "Representation Learning with Contrastive Predictive Coding".
        - Gao et al. 2021, "SimCSE: Simple Contrastive Learning of Sentence Embeddings" (τ = 0.05).
        - sentence-transformers ``MultipleNegativesRankingLoss`` is the same loss on model objects
          (with ``scale = 1/τ``).
    """

    def __init__(self, temperature: float = 0.05, symmetric: bool = False) -> None:
        super().__init__()
        self.temperature = check_positive("temperature", temperature)
        self.symmetric = symmetric

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        return info_nce(a, b, self.temperature, self.symmetric)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, symmetric={self.symmetric}"
