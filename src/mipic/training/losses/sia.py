"""SIA: Self-Distilled Intra-Relational Alignment of low-dimensional prefixes with the full token states."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mipic.training.losses._common import check_increasing_ints, check_non_negative, check_positive

KLDirection = Literal["student_teacher", "teacher_student"]


def linear_cka(x: Tensor, y: Tensor, row_mask: Tensor | None = None, eps: float = 1e-20) -> Tensor:
    r"""Linear centred kernel alignment between two representations of the same rows.

    .. math::

        \mathrm{CKA}(X, Y) = \frac{\lVert Y_c^\top X_c \rVert_F^2}
                                  {\lVert X_c^\top X_c \rVert_F \, \lVert Y_c^\top Y_c \rVert_F}

    where :math:`X_c, Y_c` are column-centred. It lies in [0, 1], is 1 for ``Y = X``, and is invariant to
    orthogonal transforms and isotropic scaling of either side (not to arbitrary invertible maps).

    Args:
        x: (..., n, p) — n rows (tokens / examples), p features.
        y: (..., n, q) — the same n rows in another space.
        row_mask: optional (..., n), true for the rows to use; masked rows are dropped (centring uses
            the per-batch-entry count of kept rows), which is how padding is excluded per sample.
        eps: added under the square root of the denominator, so that a degenerate input (fewer than 2
            distinct rows) gives CKA 0 with finite, zero gradients instead of NaN.

    Returns:
        (...) CKA per leading index, in the input dtype. Computed in float64: the numerator is a sum of
        squared Gram entries, which loses precision (or overflows in half precision) otherwise.

    Reference:
        Kornblith et al. 2019, "Similarity of Neural Network Representations Revisited" (ICML 2019).
    """
    if x.shape[:-1] != y.shape[:-1]:
        raise ValueError(f"x and y must share the row dimensions, got {tuple(x.shape)} and {tuple(y.shape)}")
    out_dtype = torch.promote_types(x.dtype, y.dtype)
    x64 = x.to(torch.float64)
    y64 = y.to(torch.float64)
    if row_mask is None:
        m = torch.ones((*x.shape[:-1], 1), dtype=torch.float64, device=x.device)  # (..., n, 1)
    else:
        if row_mask.shape != x.shape[:-1]:
            raise ValueError(f"row_mask must have shape {tuple(x.shape[:-1])}, got {tuple(row_mask.shape)}")
        m = row_mask.to(torch.float64).unsqueeze(-1)  # (..., n, 1)
    count = m.sum(dim=-2, keepdim=True).clamp_min(1.0)  # (..., 1, 1)
    # Centre over the kept rows only, then zero the dropped rows so they add nothing below.
    xc = (x64 - (x64 * m).sum(dim=-2, keepdim=True) / count) * m  # (..., n, p)
    yc = (y64 - (y64 * m).sum(dim=-2, keepdim=True) / count) * m  # (..., n, q)
    n, p, q = x.shape[-2], x.shape[-1], y.shape[-1]
    if n <= max(p, q):
        # Gram form, cheaper when rows are fewer than features (k tokens vs hidden size):
        # ||Yᵀ X||_F² = <X Xᵀ, Y Yᵀ>_F and ||Xᵀ X||_F = ||X Xᵀ||_F.
        kx = xc @ xc.transpose(-1, -2)  # (..., n, n)
        ky = yc @ yc.transpose(-1, -2)  # (..., n, n)
        hsic = (kx * ky).sum(dim=(-2, -1))
        sx = (kx * kx).sum(dim=(-2, -1))
        sy = (ky * ky).sum(dim=(-2, -1))
    else:
        cross = yc.transpose(-1, -2) @ xc  # (..., q, p)
        gx = xc.transpose(-1, -2) @ xc  # (..., p, p)
        gy = yc.transpose(-1, -2) @ yc  # (..., q, q)
        hsic = (cross * cross).sum(dim=(-2, -1))
        sx = (gx * gx).sum(dim=(-2, -1))
        sy = (gy * gy).sum(dim=(-2, -1))
    # sqrt(sx·sy + eps) rather than a clamp: sqrt's gradient at 0 is infinite, and 0·inf = NaN would leak
    # through samples that the caller masks out.
    return (hsic / torch.sqrt(sx * sy + eps)).to(out_dtype)


def masked_kl(p_logits: Tensor, q_logits: Tensor, mask: Tensor) -> Tensor:
    """Row-wise KL(p ‖ q) of ``softmax(p_logits)``, ``softmax(q_logits)`` over ``mask``: (B, T) → (B,).

    Entries outside ``mask`` are set to −inf before the softmax (so they carry no probability) and are
    zeroed before the products, so they contribute neither value nor NaN gradient. A row without any
    masked-in entry gives 0.
    """
    row_any = mask.any(dim=-1)  # (B,)
    # Give empty rows a full mask so their softmax is finite; their result is zeroed below.
    safe = mask | ~row_any.unsqueeze(-1)  # (B, T)
    log_p = F.log_softmax(p_logits.masked_fill(~safe, float("-inf")), dim=-1).masked_fill(~safe, 0.0)
    log_q = F.log_softmax(q_logits.masked_fill(~safe, float("-inf")), dim=-1).masked_fill(~safe, 0.0)
    kl = (log_p.exp() * (log_p - log_q)).sum(dim=-1)  # (B,)
    return kl * row_any.to(kl.dtype)


class SIALoss(nn.Module):
    r"""SIA — Self-Distilled Intra-Relational Alignment.

    For every aligned layer ℓ and prefix dimension d, with token states :math:`H \in \mathbb{R}^{B×T×D}`
    at layer ℓ and :math:`\bar H` = ``H.detach()`` (the teacher; the full-width states distil into their
    own prefixes, hence *self*-distilled):

    (a) **Attention relation.** Teacher scores :math:`s_j = \bar h_{CLS} \cdot \bar h_j / \sqrt{D}`;
    student scores from the d-prefix lifted back to D by a learnable linear map :math:`P_{\ell,d}`
    (``nn.Linear(d, D, bias=False)``, initialised to :math:`[I_d; 0]` so the student starts as the plain
    prefix relation): :math:`s'_j = (P h_{CLS,:d}) \cdot (P h_{j,:d}) / \sqrt{D}`. Then

    .. math::

        \mathcal{L}_{att} = \mathrm{KL}\big(\mathrm{softmax}(s'/\tau_{att}) \,\Vert\,
                                           \mathrm{softmax}(s/\tau_{att})\big)

    over the valid tokens (padding is masked to −inf). ``kl_direction="student_teacher"`` (default, as
    above) is the reverse / mode-seeking KL: a d-dimensional student cannot represent every relation of
    the D-dimensional teacher, and this direction lets it concentrate on the tokens the teacher ranks
    highest instead of spreading mass to cover all of them. ``"teacher_student"`` gives the usual
    forward (mass-covering) distillation KL(teacher ‖ student).

    (b) **Top-k CKA.** Tokens are ranked once per layer by the teacher scores. For dimension d the top
    :math:`k_d = \min(T_v, \max(k_{min}, \lceil \gamma_d T_v \rceil))` tokens are kept, with
    :math:`T_v` the sample's number of valid tokens and
    :math:`\gamma_d = \gamma_{min} + (\gamma_{max} - \gamma_{min}) \cdot d / D`. Since :math:`\gamma_d`
    grows with d and the ranking is shared, the token sets are nested across d: larger prefixes must
    agree with the full states on more tokens. Then

    .. math::

        \mathcal{L}_{cka} = 1 - \mathrm{CKA}\big(X_d, \bar Y\big), \quad
        X_d = H_{\mathrm{top}k_d, :d} \in \mathbb{R}^{k_d × d}, \;
        \bar Y = \bar H_{\mathrm{top}k_d, :} \in \mathbb{R}^{k_d × D}

    per sample (:func:`linear_cka`, padding excluded per sample); samples with fewer than 2 kept tokens
    are skipped (CKA is undefined after centring a single row).

    Total: ``attn_weight · mean_{ℓ,d} L_att + cka_weight · mean_{ℓ,d} L_cka``; each term is a mean over
    samples.

    Inputs:
        hidden_states: L + 1 tensors (B, T, D) indexed like a Hugging Face ``hidden_states`` tuple
            (index 0 = embeddings); ``layers`` pick entries 1..L.
        attention_mask: (B, T), 1 for real tokens. The query token is position 0 ([CLS]); right padding
            is assumed. With ``include_cls=False`` (default) position 0 is dropped from the key set: its
            score is its own squared norm, which carries no relation and would dominate the softmax.

    Returns:
        ``forward``: scalar. ``components``: ``(L_att, L_cka)`` unweighted means.

    The :math:`P_{\ell,d}` maps are parameters of this module: put ``loss.parameters()`` in the optimiser.
    """

    def __init__(
        self,
        hidden_size: int,
        dims: Sequence[int],
        layers: Sequence[int],
        *,
        attn_weight: float = 1.0,
        cka_weight: float = 1.0,
        attn_temperature: float = 1.0,
        k_min: int = 8,
        gamma_min: float = 0.1,
        gamma_max: float = 0.5,
        kl_direction: KLDirection = "student_teacher",
        include_cls: bool = False,
    ) -> None:
        super().__init__()
        if isinstance(hidden_size, bool) or not isinstance(hidden_size, int) or hidden_size <= 0:
            raise ValueError(f"hidden_size must be a positive integer, got {hidden_size!r}")
        self.hidden_size = hidden_size
        self.dims = check_increasing_ints(dims, "dims")
        if self.dims[-1] > hidden_size:
            raise ValueError(f"dims must be <= hidden_size ({hidden_size}), got {list(self.dims)}")
        self.layers = check_increasing_ints(layers, "layers")
        self.attn_weight = check_non_negative("attn_weight", attn_weight)
        self.cka_weight = check_non_negative("cka_weight", cka_weight)
        self.attn_temperature = check_positive("attn_temperature", attn_temperature)
        if isinstance(k_min, bool) or not isinstance(k_min, int) or k_min < 1:
            raise ValueError(f"k_min must be an integer >= 1, got {k_min!r}")
        self.k_min = k_min
        if not 0 < gamma_min <= gamma_max <= 1:
            raise ValueError(
                f"gamma range must satisfy 0 < gamma_min <= gamma_max <= 1, got ({gamma_min}, {gamma_max})"
            )
        self.gamma_min = float(gamma_min)
        self.gamma_max = float(gamma_max)
        if kl_direction not in ("student_teacher", "teacher_student"):
            raise ValueError(
                f'kl_direction must be "student_teacher" or "teacher_student", got {kl_direction!r}'
            )
        self.kl_direction: KLDirection = kl_direction
        self.include_cls = include_cls
        self.projections = nn.ModuleDict()
        for layer in self.layers:
            for d in self.dims:
                proj = nn.Linear(d, hidden_size, bias=False)
                with torch.no_grad():
                    proj.weight.copy_(torch.eye(hidden_size, d))  # (D, d): embeds the prefix as-is
                self.projections[self.key(layer, d)] = proj

    @staticmethod
    def key(layer: int, dim: int) -> str:
        """ModuleDict key of :math:`P_{\\ell,d}` (same spelling as the manifest's budget keys)."""
        return f"d{dim}_l{layer}"

    def projection(self, layer: int, dim: int) -> nn.Linear:
        proj = self.projections[self.key(layer, dim)]
        assert isinstance(proj, nn.Linear)
        return proj

    def gamma(self, d: int) -> float:
        """Kept-token fraction :math:`\\gamma_d` for prefix dimension d (non-decreasing in d)."""
        return self.gamma_min + (self.gamma_max - self.gamma_min) * d / self.hidden_size

    def num_topk(self, d: int, t_valid: Tensor) -> Tensor:
        """Tokens kept for dimension d: (B,) valid counts → (B,) int64 ``min(T_v, max(k_min, ⌈γ_d T_v⌉))``."""
        # Subtract a hair before ceil so that exact products like 0.3·10 = 3.0000000000000004 give 3.
        frac = torch.ceil(t_valid.to(torch.float64) * self.gamma(d) - 1e-9).to(torch.int64)
        k = torch.clamp(frac, min=self.k_min)
        return torch.minimum(k, t_valid.to(torch.int64))

    def key_mask(self, attention_mask: Tensor) -> Tensor:
        """(B, T) bool: the tokens that take part (valid, and not position 0 unless ``include_cls``)."""
        mask = attention_mask.bool()
        if not self.include_cls:
            mask = mask.clone()
            mask[:, 0] = False
        return mask

    def _scores(self, h: Tensor) -> Tensor:
        """(B, T, E) → (B, T): query = position 0, scaled by √D (D, not E: the lifted student lives in D)."""
        return torch.einsum("be,bte->bt", h[:, 0], h) / math.sqrt(self.hidden_size)

    def attention_kl(self, h: Tensor, teacher_scores: Tensor, key_mask: Tensor, layer: int, d: int) -> Tensor:
        """(a) for one (layer, d): mean over samples of the masked KL."""
        lifted = self.projection(layer, d)(h[..., :d].float())  # (B, T, D)
        student = self._scores(lifted) / self.attn_temperature  # (B, T)
        teacher = teacher_scores / self.attn_temperature  # (B, T)
        if self.kl_direction == "student_teacher":
            kl = masked_kl(student, teacher, key_mask)
        else:
            kl = masked_kl(teacher, student, key_mask)
        rows = key_mask.any(dim=-1).to(kl.dtype)  # (B,)
        return (kl * rows).sum() / rows.sum().clamp_min(1.0)

    def topk_cka(self, h: Tensor, teacher: Tensor, order: Tensor, k: Tensor, d: int) -> Tensor:
        """(b) for one (layer, d): mean over samples of 1 − CKA on each sample's top-k_d tokens.

        ``order`` (B, K) holds token indices by decreasing teacher score, valid tokens first, with
        K >= max(k); ``k`` (B,) is :meth:`num_topk` for this d.
        """
        rows = torch.arange(order.shape[1], device=h.device).unsqueeze(0) < k.unsqueeze(1)  # (B, K)
        x = torch.gather(h[..., :d], 1, order.unsqueeze(-1).expand(-1, -1, d))  # (B, K, d)
        y = torch.gather(teacher, 1, order.unsqueeze(-1).expand(-1, -1, teacher.shape[-1]))  # (B, K, D)
        cka = linear_cka(x, y, row_mask=rows)  # (B,)
        ok = (k >= 2).to(cka.dtype)
        return ((1.0 - cka) * ok).sum() / ok.sum().clamp_min(1.0)

    def components(self, hidden_states: Sequence[Tensor], attention_mask: Tensor) -> tuple[Tensor, Tensor]:
        """``(mean L_att, mean L_cka)`` over the aligned (layer, dim) pairs, unweighted."""
        if self.layers[-1] >= len(hidden_states):
            raise ValueError(
                f"layer {self.layers[-1]} requested but hidden_states holds {len(hidden_states) - 1} layers"
            )
        key_mask = self.key_mask(attention_mask)  # (B, T)
        t_valid = key_mask.sum(dim=-1)  # (B,)
        ks = {d: self.num_topk(d, t_valid) for d in self.dims}  # d → (B,)
        # One host sync per call: gather only as many ranked tokens as the largest k needs (k grows with d).
        k_cap = int(ks[self.dims[-1]].max().item()) if t_valid.numel() else 0
        attn_terms: list[Tensor] = []
        cka_terms: list[Tensor] = []
        for layer in self.layers:
            h = hidden_states[layer]  # (B, T, D)
            if h.shape[-1] != self.hidden_size:
                raise ValueError(
                    f"hidden_states have size {h.shape[-1]}, expected hidden_size={self.hidden_size}"
                )
            teacher = h.detach().float()  # (B, T, D): self-distillation target, no gradient
            t_scores = self._scores(teacher)  # (B, T)
            # Rank once per layer; padding (and CLS unless included) sorts last. stable=True keeps ties in
            # token order so that appended padding cannot reorder the real tokens.
            order = torch.sort(
                t_scores.masked_fill(~key_mask, float("-inf")), dim=-1, descending=True, stable=True
            ).indices  # (B, T)
            for d in self.dims:
                if self.attn_weight > 0:
                    attn_terms.append(self.attention_kl(h, t_scores, key_mask, layer, d))
                if self.cka_weight > 0 and k_cap >= 2:
                    cka_terms.append(self.topk_cka(h, teacher, order[:, :k_cap], ks[d], d))
        zero = torch.zeros((), device=attention_mask.device)
        attn = torch.stack(attn_terms).mean() if attn_terms else zero
        cka = torch.stack(cka_terms).mean() if cka_terms else zero
        return attn, cka

    def forward(self, hidden_states: Sequence[Tensor], attention_mask: Tensor) -> Tensor:
        attn, cka = self.components(hidden_states, attention_mask)
        return self.attn_weight * attn + self.cka_weight * cka

    def extra_repr(self) -> str:
        return (
            f"hidden_size={self.hidden_size}, dims={self.dims}, layers={self.layers}, "
            f"attn_weight={self.attn_weight}, cka_weight={self.cka_weight}, "
            f"attn_temperature={self.attn_temperature}, k_min={self.k_min}, "
            f"gamma=({self.gamma_min}, {self.gamma_max}), kl_direction={self.kl_direction!r}, "
            f"include_cls={self.include_cls}"
        )
