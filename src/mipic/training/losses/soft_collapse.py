"""SoftCollapseRegularizer (MIC): each Matryoshka prefix decorrelated from its residual.

MIC keeps Matryoshka prefixes informative on their own. This term targets *soft collapse*: the residual
features merely re-encode the prefix (they are linearly predictable from it), so larger budgets add little.
Its sibling, :class:`~mipic.training.losses.spectral_isotropy.SpectralIsotropyRegularizer`, targets anisotropy.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mipic.training.losses._common import check_increasing_ints, check_positive, usable_dims


class SoftCollapseRegularizer(nn.Module):
    r"""Decorrelate each Matryoshka prefix from its residual.

    For each d in ``dims`` with d < D: standardise every column of x over the batch, split into prefix
    :math:`p = x_{:, :d}` and residual :math:`r = x_{:, d:}`, and penalise the batch cross-correlation

    .. math::

        C = \frac{1}{B} p^\top r \in \mathbb{R}^{d \times (D-d)}, \qquad
        \mathcal{L}_{SCR} = \frac{1}{|\mathcal{D}|} \sum_{d} \operatorname{mean}(C^2)

    (the cross-correlation block of Barlow Twins, pushed to 0). Independent prefix and residual give
    :math:`\mathbb{E}[C_{jk}^2] \approx 1/B`; a residual column that copies a prefix column gives an entry 1.
    Dims ``>= D`` (no residual) are skipped.

    Inputs:
        x: (B, D) embeddings (pooled; standardisation makes the scale irrelevant), B >= 2.

    Returns:
        scalar tensor.

    Reference:
        Zbontar et al. 2021, "Barlow Twins: Self-Supervised Learning via Redundancy Reduction".
    """

    def __init__(self, dims: Sequence[int], eps: float = 1e-5) -> None:
        super().__init__()
        self.dims = check_increasing_ints(dims, "dims")
        self.eps = check_positive("eps", eps)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 2 or x.shape[0] < 2:
            raise ValueError(f"x must be (B, D) with B >= 2, got shape {tuple(x.shape)}")
        batch = x.shape[0]
        xf = x.float()
        z = (xf - xf.mean(dim=0)) / (xf.std(dim=0, unbiased=False) + self.eps)  # (B, D), standardised columns
        terms = []
        for d in usable_dims(self.dims, x.shape[1]):
            c = z[:, :d].T @ z[:, d:] / batch  # (d, D - d)
            terms.append(c.pow(2).mean())
        return torch.stack(terms).mean()

    def extra_repr(self) -> str:
        return f"dims={self.dims}, eps={self.eps}"
