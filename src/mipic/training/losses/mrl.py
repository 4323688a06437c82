"""Matryoshka Representation Learning on top of InfoNCE."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from mipic.training.losses._common import (
    check_increasing_ints,
    check_positive,
    check_weights,
    truncate_normalize,
)
from mipic.training.losses.infonce import info_nce


class MatryoshkaInfoNCELoss(nn.Module):
    r"""InfoNCE applied to every Matryoshka prefix and summed with per-dimension weights.

    .. math::

        \mathcal{L}_{\mathrm{MRL}} = \sum_{d \in \mathcal{D}} w_d \,
            \mathrm{InfoNCE}_\tau\big(\mathrm{trunc}_d(a), \mathrm{trunc}_d(b)\big),
        \qquad \mathrm{trunc}_d(x) = \frac{x_{:d}}{\lVert x_{:d} \rVert_2}

    The weighted sum is not renormalised (as in the MRL paper and sentence-transformers'
    ``MatryoshkaLoss``, whose default weights are all 1).

    Inputs:
        a: (B, D) anchors (pooled, not necessarily normalised).
        b: (B, D) positives, ``b[i]`` pairs with ``a[i]``.
        ``dims[-1]`` must be ``<= D``.

    Returns:
        scalar tensor.

    Why not sentence-transformers' ``MatryoshkaLoss``: it wraps a loss that takes a
    ``SentenceTransformer`` model object and features, whereas our trainer already holds the pooled
    tensors; truncating tensors directly is the same computation without the model plumbing.

    Reference:
        Kusupati et al. 2022, "Matryoshka Representation Learning" (NeurIPS 2022).
    """

    def __init__(
        self,
        dims: Sequence[int],
        weights: Sequence[float] | None = None,
        temperature: float = 0.05,
        symmetric: bool = False,
    ) -> None:
        super().__init__()
        self.dims = check_increasing_ints(dims, "dims")
        self.weights = check_weights(weights, len(self.dims))
        self.temperature = check_positive("temperature", temperature)
        self.symmetric = symmetric

    def per_dim(self, a: Tensor, b: Tensor) -> list[Tensor]:
        """Unweighted InfoNCE at each dim, in the order of ``dims``."""
        if a.dim() != 2 or a.shape != b.shape:
            raise ValueError(
                f"a and b must both be (B, D) with equal shapes, got {tuple(a.shape)} and {tuple(b.shape)}"
            )
        if self.dims[-1] > a.shape[-1]:
            raise ValueError(f"largest dim {self.dims[-1]} exceeds the embedding size {a.shape[-1]}")
        return [
            info_nce(truncate_normalize(a, d), truncate_normalize(b, d), self.temperature, self.symmetric)
            for d in self.dims
        ]

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        losses = self.per_dim(a, b)
        total = losses[0] * self.weights[0]
        for w, loss in zip(self.weights[1:], losses[1:], strict=True):
            total = total + w * loss
        return total

    def extra_repr(self) -> str:
        return f"dims={self.dims}, weights={self.weights}, temperature={self.temperature}"
