"""SpectralIsotropyRegularizer (MIC): uniformity of every low-dimensional normalised prefix on its sphere.

MIC keeps Matryoshka prefixes informative on their own. This term targets *anisotropy*: a short prefix uses a
narrow cone of its sphere, which wastes its few dimensions. Its sibling,
:class:`~mipic.training.losses.soft_collapse.SoftCollapseRegularizer`, targets soft collapse.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mipic.training.losses._common import check_increasing_ints, check_positive, usable_dims


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
        for d in usable_dims(self.dims, x.shape[1]):
            u = F.normalize(x[:, :d].float(), p=2.0, dim=-1)  # (B, d)
            # ||u_i − u_j||² = 2 − 2 u_i·u_j on the unit sphere; clamp rounding below 0.
            sq = (2.0 - 2.0 * (u @ u.T)).clamp_min(0.0)  # (B, B)
            terms.append(torch.logsumexp(-self.t * sq[off_diag], dim=0) - math.log(batch * (batch - 1)))
        return torch.stack(terms).mean()

    def extra_repr(self) -> str:
        return f"dims={self.dims}, t={self.t}"
