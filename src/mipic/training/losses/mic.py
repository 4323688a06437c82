"""MIC regularisers: keep Matryoshka prefixes informative on their own.

Two failure modes of nested embeddings are targeted. *Soft collapse*: the residual features merely
re-encode the prefix (they are linearly predictable from it), so larger budgets add little.
*Anisotropy*: a short prefix uses a narrow cone of its sphere, which wastes its few dimensions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mipic.training.losses._common import check_increasing_ints, check_positive


def _usable_dims(dims: tuple[int, ...], size: int) -> list[int]:
    usable = [d for d in dims if d < size]
    if not usable:
        raise ValueError(f"no dim in {list(dims)} is smaller than the embedding size {size}")
    return usable


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
        for d in _usable_dims(self.dims, x.shape[1]):
            c = z[:, :d].T @ z[:, d:] / batch  # (d, D - d)
            terms.append(c.pow(2).mean())
        return torch.stack(terms).mean()

    def extra_repr(self) -> str:
        return f"dims={self.dims}, eps={self.eps}"


class SpectralIsotropyRegularizer(nn.Module):
    r"""Uniformity of every low-dimensional normalised prefix on its hypersphere.

    For each d in ``dims`` with d < D, with :math:`u_i = \mathrm{trunc}_d(x_i)`:

    .. math::

        \mathcal{L}_{SIR} = \frac{1}{|\mathcal{D}|} \sum_{d}
            \log \frac{1}{B(B-1)} \sum_{i \ne j} \exp\big(-t \lVert u_i - u_j \rVert_2^2\big)

    Lower is more uniform (points spread over the sphere, so the prefix's covariance spectrum is flat);
    the value is at most 0, reached when all points coincide. Computed with ``logsumexp``. The full
    dimension is left to the contrastive loss, which already spreads it.

    Inputs:
        x: (B, D) embeddings, B >= 2.

    Returns:
        scalar tensor (negative).

    Reference:
        Wang & Isola 2020, "Understanding Contrastive Representation Learning through Alignment and
        Uniformity on the Hypersphere" (t = 2).
    """

    def __init__(self, dims: Sequence[int], t: float = 2.0) -> None:
        super().__init__()
        self.dims = check_increasing_ints(dims, "dims")
        self.t = check_positive("t", t)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 2 or x.shape[0] < 2:
            raise ValueError(f"x must be (B, D) with B >= 2, got shape {tuple(x.shape)}")
        batch = x.shape[0]
        off_diag = ~torch.eye(batch, dtype=torch.bool, device=x.device)  # (B, B)
        terms = []
        for d in _usable_dims(self.dims, x.shape[1]):
            u = F.normalize(x[:, :d].float(), p=2.0, dim=-1)  # (B, d)
            # ||u_i − u_j||² = 2 − 2 u_i·u_j on the unit sphere; clamp rounding below 0.
            sq = (2.0 - 2.0 * (u @ u.T)).clamp_min(0.0)  # (B, B)
            terms.append(torch.logsumexp(-self.t * sq[off_diag], dim=0) - math.log(batch * (batch - 1)))
        return torch.stack(terms).mean()

    def extra_repr(self) -> str:
        return f"dims={self.dims}, t={self.t}"
