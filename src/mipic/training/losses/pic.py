"""PIC: Progressive Information Chaining along a chain of (dim, layer) budgets."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mipic.training.losses._common import _as_int, check_positive, truncate_normalize
from mipic.training.losses.infonce import info_nce


def _check_chain(chain: Sequence[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    raw = [tuple(c) for c in chain]
    if len(raw) < 2:
        raise ValueError(f"chain must have at least 2 checkpoints, got {len(raw)}")
    out: list[tuple[int, int]] = []
    for c in raw:
        if len(c) != 2:
            raise ValueError(f"chain checkpoints must be (dim, layer) pairs, got {c!r}")
        dim, layer = _as_int(c[0]), _as_int(c[1])
        if dim is None or layer is None or dim <= 0 or layer <= 0:
            raise ValueError(f"chain checkpoints must be positive integer (dim, layer) pairs, got {c!r}")
        out.append((dim, layer))
    for (d0, l0), (d1, l1) in itertools.pairwise(out):
        if d1 < d0 or l1 < l0:
            raise ValueError(f"chain must be non-decreasing in both dim and layer, got {out}")
        if (d1, l1) == (d0, l0):
            raise ValueError(f"chain must not repeat a checkpoint, got {out}")
    return tuple(out)


class PICLoss(nn.Module):
    r"""PIC — Progressive Information Chaining.

    An ordered chain of budgets :math:`(d_1, \ell_1) \to \dots \to (d_n, \ell_n)` from small/shallow to
    full, e.g. (32, 2) → (64, 3) → (128, 4) → (256, 5) → (384, 6) for a 6-layer, 384-wide model. With
    :math:`z_i = \mathrm{trunc}_{d_i}(\mathrm{pool}(H^{\ell_i}))` each step i = 1..n−1 asks the cheaper
    embedding to predict the next one through a small projector :math:`\varphi_i: d_i \to d_{i+1}`
    (Linear → GELU → Linear):

    .. math::

        \mathcal{L}_{PIC} = \frac{1}{|A|} \sum_{i \in A}
            \mathrm{InfoNCE}_\tau\big(\varphi_i(z^a_i),\; \mathrm{sg}(z^b_{i+1})\big)

    where A is the set of active steps and ``sg`` is stop-gradient: information flows down the chain
    only (each budget is pulled towards the next richer one, never the other way), so the strong
    budgets are not degraded to match the weak ones — the same reason the teacher is detached in SIA
    and in the 2D-Matryoshka KL term. The mean over active steps keeps the scale of the term steady
    while steps switch on.

    Targets come from view b (the other dropout pass) when ``pooled_b`` is given: that makes each step a
    SimCSE-style cross-view prediction, so the projector cannot solve it by copying dropout noise shared
    within one pass. Passing ``pooled_b=None`` uses view a for both sides.

    Progressive schedule (``progressive=True``): :meth:`set_progress` with the fraction of training done;
    step i (0-based, of ``num_steps = n − 1``) is active once ``fraction >= i / num_steps``, so the
    first step is on from the start and the last switches on at ``(n − 2)/(n − 1)`` of training. With
    ``progressive=False`` every step is always active.

    Inputs:
        pooled_a: L + 1 tensors (B, H) indexed like ``hidden_states`` (index ℓ = layer ℓ), e.g.
            ``EncoderOutputs.pooled_all()``; untruncated mean-pooled embeddings.
        pooled_b: the same for view b, or ``None``.

    Returns:
        scalar tensor.

    The projectors are parameters of this module: put ``loss.parameters()`` in the optimiser.
    """

    def __init__(
        self,
        chain: Sequence[tuple[int, int]],
        projector_hidden: int | None = None,
        temperature: float = 0.05,
        progressive: bool = False,
        symmetric: bool = False,
    ) -> None:
        super().__init__()
        self.chain = _check_chain(chain)
        if projector_hidden is not None and (
            isinstance(projector_hidden, bool)
            or not isinstance(projector_hidden, int)
            or projector_hidden < 1
        ):
            raise ValueError(f"projector_hidden must be a positive integer or None, got {projector_hidden!r}")
        self.projector_hidden = projector_hidden
        self.temperature = check_positive("temperature", temperature)
        self.progressive = progressive
        self.symmetric = symmetric
        self.progress = 0.0
        self.projectors = nn.ModuleList()
        for (d_in, _), (d_out, _) in itertools.pairwise(self.chain):
            width = projector_hidden if projector_hidden is not None else d_out
            self.projectors.append(nn.Sequential(nn.Linear(d_in, width), nn.GELU(), nn.Linear(width, d_out)))

    @property
    def num_steps(self) -> int:
        return len(self.chain) - 1

    def set_progress(self, fraction: float) -> None:
        """Fraction of training done, in [0, 1]; only matters with ``progressive=True``."""
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"fraction must be in [0, 1], got {fraction}")
        self.progress = float(fraction)

    @property
    def num_active_steps(self) -> int:
        """Steps 0..num_active_steps−1 are active (the schedule switches steps on in chain order)."""
        if not self.progressive:
            return self.num_steps
        # Step i is on when progress >= i / num_steps; the tolerance keeps e.g. 1/3 ≥ 1/3 true under rounding.
        return min(self.num_steps, math.floor(self.progress * self.num_steps + 1e-9) + 1)

    def forward(self, pooled_a: Sequence[Tensor], pooled_b: Sequence[Tensor] | None = None) -> Tensor:
        targets = pooled_a if pooled_b is None else pooled_b
        if len(targets) != len(pooled_a):
            raise ValueError(f"pooled_a and pooled_b differ in length ({len(pooled_a)} vs {len(targets)})")
        num_layers = len(pooled_a) - 1
        if self.chain[-1][1] > num_layers:
            raise ValueError(
                f"chain reaches layer {self.chain[-1][1]} but the inputs hold {num_layers} layers"
            )
        if self.chain[-1][0] > pooled_a[-1].shape[-1]:
            raise ValueError(
                f"chain reaches dim {self.chain[-1][0]} but the embeddings have size {pooled_a[-1].shape[-1]}"
            )
        losses: list[Tensor] = []
        for i in range(self.num_active_steps):
            (d_i, l_i), (d_next, l_next) = self.chain[i], self.chain[i + 1]
            z_i = truncate_normalize(pooled_a[l_i], d_i)  # (B, d_i)
            target = truncate_normalize(targets[l_next], d_next).detach()  # (B, d_next), stop-gradient
            pred = self.projectors[i](z_i)  # (B, d_next)
            losses.append(info_nce(pred, target, self.temperature, self.symmetric))
        return torch.stack(losses).mean()

    def extra_repr(self) -> str:
        return (
            f"chain={list(self.chain)}, projector_hidden={self.projector_hidden}, "
            f"temperature={self.temperature}, progressive={self.progressive}"
        )
