"""SelfDistillLoss: every (layer, dim) read-out matches a frozen teacher's in-batch similarity distribution."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mipic.training.losses._common import check_non_negative, check_positive


def similarity_logits(z: Tensor, temperature: float) -> Tensor:
    """(B, D) → (B, B) cosine similarities / τ with the diagonal masked to −∞ (computed in float32 at least)."""
    zn = F.normalize(z.float(), dim=-1)
    logits = zn @ zn.T / temperature
    eye = torch.eye(z.shape[0], dtype=torch.bool, device=z.device)
    return logits.masked_fill(eye, float("-inf"))


def distill_kl(student: Tensor, teacher_log_probs: Tensor, temperature: float) -> Tensor:
    """KL(P_T ‖ P_S) averaged over rows: student vectors (B, d) against teacher log-probabilities (B, B)."""
    log_q = F.log_softmax(similarity_logits(student, temperature), dim=-1)
    p = teacher_log_probs.exp()
    eye = torch.eye(p.shape[0], dtype=torch.bool, device=p.device)
    # masked entries have p = 0 and both logs −∞: their 0·(−∞ − −∞) would be NaN, so drop them explicitly
    terms = torch.where(eye, torch.zeros_like(p), p * (teacher_log_probs - log_q))
    return terms.sum(dim=-1).mean()


AlignDimWeighting = Literal["uniform", "linear"]


def align_weights(budgets: Sequence[tuple[int, int]], weighting: AlignDimWeighting) -> Tensor:
    """Per-budget weights of the align term, mean 1: ``uniform`` (every (d, l) alike) or ``linear``
    (w ∝ d: the wide prefixes, whose tail coordinates a shallow layer predicts worst, weigh most)."""
    if weighting == "uniform":
        w = torch.ones(len(budgets))
    elif weighting == "linear":
        w = torch.tensor([float(d) for d, _ in budgets])
    else:
        raise ValueError(f"align_dim_weighting must be 'uniform' or 'linear', got {weighting!r}")
    return w * (len(budgets) / w.sum())


def align_loss(readouts: Sequence[Tensor], target: Tensor, budgets: Sequence[tuple[int, int]],
               weights: Tensor | None = None) -> Tensor:
    """Weighted mean (``weights``, mean 1; None = uniform) over budgets (d, l) and rows of
    1 − cos(readouts[l − 1][:, :d], target[:, :d]): each budget's vector against the same prefix of the
    target, in the same coordinates (no gradient reaches ``target``)."""
    target = target.detach().float()
    terms = torch.stack([
        (1 - F.cosine_similarity(readouts[layer - 1][:, :d].float(), target[:, :d], dim=-1)).mean()
        for d, layer in budgets
    ])
    if weights is None:
        return terms.mean()
    return (terms * weights.to(terms.device)).mean()


class SelfDistillLoss(nn.Module):
    r"""Self-distillation of every trained budget from a frozen teacher.

    .. math::

        \mathcal{L}_{distill} = w\,\Big[\frac{1}{|S|}\sum_{(l, d) \in S} \mathrm{KL}\big(P_T \,\|\, P_{l,d}\big)
            + w_{anchor}\,\frac{1}{B}\sum_i \big(1 - \cos(z^{(L)}_i, t_i)\big)
            + w_{align}\,\frac{1}{|S|}\sum_{(l, d) \in S} \omega_d\,\frac{1}{B}\sum_i
              \big(1 - \cos(z^{(l)}_i[{:}d], t_i[{:}d])\big)\Big]

    with :math:`P_T[i, :] = \mathrm{softmax}_{j \ne i}(\cos(t_i, t_j)/\tau)` from the teacher vectors
    :math:`t` (the frozen base model's last layer at full width, no gradient) and
    :math:`P_{l,d}[i, :] = \mathrm{softmax}_{j \ne i}(\cos(z^{(l)}_i[{:}d], z^{(l)}_j[{:}d])/\tau)` from the
    student's read-out at layer l (pooled states through that layer's exit head), truncated to d. The
    batch is every text of the step (anchors and their positives), so the teacher's cross similarities
    — a title's to its own article body and to the others' — are what a shallow layer learns to reproduce.

    The anchor term (optional, ``anchor_weight``) ties the student's last layer at full width to the
    teacher text by text; with the KL term at (L, H) it keeps the full budget where the base model had it.
    The align term (optional, ``align_weight``; issue 18) is the *absolute* counterpart of the KL: the KL
    matches in-batch similarity distributions, which any rotation of z leaves unchanged, so alone it lets
    every exit live in its own coordinates, and a query at layer 3 cannot search an index built at layer 6.
    The align term pulls each budget's vector onto the first d coordinates of the teacher vector ``t`` *in
    the served last-layer coordinates* (the caller passes t through the last layer's head, a rotation),
    so (d, l) ≈ (d, L) text by text and every exit shares one space. Cosine rather than MSE: the served
    vector is re-normalised after the cut, so only the direction of each prefix matters. The per-budget
    weights :math:`\omega_d` (``align_dim_weighting``, mean 1 over S) are 1 (``uniform``) or ∝ d
    (``linear``: the wide prefixes weigh most; the first 64 dims of a shallow exit are close to the last
    layer's already, its tail coordinates are what it misses).

    The weight :math:`w` (``weight``) scales the whole term against the objective it is added to; the anchor
    and align weights are relative to the KL inside it.

    Every term is zero when the student is the teacher (same network, last layer, full width, an
    orthogonal or identity head); the align term then is also zero at (d, L) for every d.

    Inputs: ``readouts`` — the student's read-out per layer (index l − 1 for layer l), each (B, H);
    ``teacher`` — (B, H_t). Returns the weighted scalar; ``last_kl``, ``last_anchor`` and ``last_align`` hold the
    unweighted parts of the last call.
    Paper: this project's issue 12; the KL over in-batch similarities follows the relational
    distillation of Park et al. 2019 / SimCSE-style temperature-scaled cosine softmax.
    """

    def __init__(
        self,
        budgets: Sequence[tuple[int, int]],
        weight: float = 1.0,
        temperature: float = 0.05,
        anchor_weight: float = 0.0,
        align_weight: float = 0.0,
        align_dim_weighting: AlignDimWeighting = "uniform",
    ) -> None:
        super().__init__()
        if not budgets:
            raise ValueError("budgets must not be empty")
        for d, layer in budgets:
            if isinstance(d, bool) or isinstance(layer, bool) or int(d) <= 0 or int(layer) <= 0:
                raise ValueError(f"budgets must be positive (dim, layer) pairs, got {list(budgets)}")
        self.budgets = tuple((int(d), int(layer)) for d, layer in budgets)
        self.weight = check_non_negative("weight", weight)
        self.temperature = check_positive("temperature", temperature)
        self.anchor_weight = check_non_negative("anchor_weight", anchor_weight)
        self.align_weight = check_non_negative("align_weight", align_weight)
        self.align_dim_weighting = align_dim_weighting
        self.align_weights: Tensor
        self.register_buffer("align_weights", align_weights(self.budgets, align_dim_weighting), persistent=False)
        self.last_kl = torch.zeros(())
        self.last_anchor = torch.zeros(())
        self.last_align = torch.zeros(())

    def forward(self, readouts: Sequence[Tensor], teacher: Tensor) -> Tensor:
        with torch.no_grad():
            t_log = F.log_softmax(similarity_logits(teacher.detach(), self.temperature), dim=-1)
        kl = torch.stack([distill_kl(readouts[layer - 1][:, :d], t_log, self.temperature)
                          for d, layer in self.budgets]).mean()
        total = kl
        self.last_kl = kl.detach()
        if self.anchor_weight > 0:
            last = readouts[-1]
            anchor = (1 - F.cosine_similarity(last.float(), teacher.detach().float(), dim=-1)).mean()
            self.last_anchor = anchor.detach()
            total = total + self.anchor_weight * anchor
        if self.align_weight > 0:
            align = align_loss(readouts, teacher.detach(), self.budgets, self.align_weights)
            self.last_align = align.detach()
            total = total + self.align_weight * align
        return self.weight * total

    def extra_repr(self) -> str:
        return (f"budgets={len(self.budgets)}, weight={self.weight}, temperature={self.temperature}, "
                f"anchor_weight={self.anchor_weight}, "
                f"align_weight={self.align_weight}, align_dim_weighting={self.align_dim_weighting!r}")
