"""MIPICLoss: the full MIPIC training objective on two dropout views of a batch."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mipic.training.losses._common import EncoderOutputs, LossOutput, check_non_negative
from mipic.training.losses.mrl import MatryoshkaInfoNCELoss
from mipic.training.losses.pic import PICLoss
from mipic.training.losses.sia import SIALoss
from mipic.training.losses.soft_collapse import SoftCollapseRegularizer
from mipic.training.losses.spectral_isotropy import SpectralIsotropyRegularizer

#: Terms that enter the total, in buffer order (``term_scale`` is indexed by this).
TERM_NAMES: tuple[str, ...] = ("mrl", "sia", "pic", "scr", "sir")


class MIPICLoss(nn.Module):
    r"""The MIPIC objective.

    .. math::

        \mathcal{L} = \alpha\,\mathcal{L}_{MRL}
            + (1-\alpha)\big(w_{sia}\,\mathcal{L}_{SIA} + w_{pic}\,\mathcal{L}_{PIC}\big)
            + w_{scr}\,\mathcal{L}_{SCR} + w_{sir}\,\mathcal{L}_{SIR}

    * :math:`\mathcal{L}_{MRL}` — ``mrl`` (:class:`MatryoshkaInfoNCELoss`) on the last layer's mean-pooled
      embeddings, view a against view b (unsupervised SimCSE: the views are two dropout passes; for
      supervised pairs pass the anchor as view a and the positive as view b).
    * :math:`\mathcal{L}_{SIA}` — ``sia`` (:class:`SIALoss`) on view a's token states at its layers.
    * :math:`\mathcal{L}_{PIC}` — ``pic`` (:class:`PICLoss`) along its chain, predictions from view a,
      stop-gradient targets from view b (``pic_cross_view=True``, a cross-view prediction that cannot be solved
      by matching dropout noise within one pass) or from view a itself (``pic_cross_view=False``).
    * :math:`\mathcal{L}_{SCR}`, :math:`\mathcal{L}_{SIR}` — ``scr`` (:class:`SoftCollapseRegularizer`) and
      ``sir`` (:class:`SpectralIsotropyRegularizer`) on view a's last-layer pooled embedding.

    A wrapper in the manner of sentence-transformers' ``MatryoshkaLoss``: it takes its terms built, and owns only
    their weights. A term that is ``None`` is not computed at all; a term given with a zero coefficient is
    refused (leave it out instead). :meth:`mipic.training.objectives.mipic.MIPICObjective.from_config` builds the
    terms from a config section.

    ``normalize_terms=True`` divides each term by a running EMA of its own detached magnitude
    (``|term|``; initialised to the first training step's value, updated in training mode only, kept in
    the ``term_scale`` buffer so it is checkpointed). Every term then starts near ±1, so none dominates
    at initialisation whatever its natural scale (InfoNCE ~ log B, SCR ~ 1/B, CKA in [0, 1]); the
    weights keep their meaning as relative importances, and gradients keep the direction of each term.

    Inputs:
        view_a, view_b: :class:`EncoderOutputs` of the two passes (same batch, same mask).

    Returns:
        :class:`LossOutput` with ``loss`` (scalar) and ``terms``: the raw value of each computed term
        (``mrl``, ``sia``, ``sia_attn``, ``sia_cka``, ``pic``, ``scr``, ``sir``), ``total`` and
        ``pic_active_steps``. Producing the floats costs one host sync.

    The SIA projections and PIC projectors are parameters of this module: optimise
    ``list(model.parameters()) + list(loss.parameters())``. Call :meth:`set_progress` every step when the
    PIC chain is progressive.
    """

    def __init__(
        self,
        hidden_size: int,
        mrl: MatryoshkaInfoNCELoss,
        sia: SIALoss | None = None,
        pic: PICLoss | None = None,
        scr: SoftCollapseRegularizer | None = None,
        sir: SpectralIsotropyRegularizer | None = None,
        *,
        alpha: float = 0.4,
        w_sia: float = 1.0,
        w_pic: float = 1.0,
        w_scr: float = 0.1,
        w_sir: float = 0.1,
        pic_cross_view: bool = True,
        normalize_terms: bool = False,
        ema_decay: float = 0.99,
    ) -> None:
        super().__init__()
        if isinstance(hidden_size, bool) or not isinstance(hidden_size, int) or hidden_size <= 0:
            raise ValueError(f"hidden_size must be a positive integer, got {hidden_size!r}")
        self.hidden_size = hidden_size
        if mrl.dims[-1] > hidden_size:
            raise ValueError(f"dims must be <= hidden_size ({hidden_size}), got {list(mrl.dims)}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        self.alpha = float(alpha)
        self.w_sia = check_non_negative("w_sia", w_sia)
        self.w_pic = check_non_negative("w_pic", w_pic)
        self.w_scr = check_non_negative("w_scr", w_scr)
        self.w_sir = check_non_negative("w_sir", w_sir)
        if not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {ema_decay}")
        self.ema_decay = float(ema_decay)
        self.normalize_terms = normalize_terms
        self.pic_cross_view = pic_cross_view
        if pic is not None and pic.chain[-1][0] > hidden_size:
            raise ValueError(f"chain dims must be <= hidden_size ({hidden_size}), got {list(pic.chain)}")
        for reg in (scr, sir):
            if reg is not None and not any(d < hidden_size for d in reg.dims):
                raise ValueError("mic_dims must contain a dim below hidden_size when w_scr or w_sir is > 0")
        self.mrl = mrl
        self.sia = sia
        self.pic = pic
        self.scr = scr
        self.sir = sir
        coeff = self.coefficients()
        given = {"sia": (sia, self.w_sia), "pic": (pic, self.w_pic), "scr": (scr, self.w_scr), "sir": (sir, self.w_sir)}
        for name, (term, weight) in given.items():
            if term is not None and coeff[name] == 0:
                raise ValueError(f"{name} is given but its coefficient is 0 (alpha={self.alpha}, w_{name}={weight}): "
                                 "leave it out")

        self.term_scale: Tensor
        self.term_scale_ready: Tensor
        self.register_buffer("term_scale", torch.ones(len(TERM_NAMES)))
        self.register_buffer("term_scale_ready", torch.zeros(len(TERM_NAMES), dtype=torch.bool))

    def coefficients(self) -> dict[str, float]:
        """The weight each (possibly normalised) term gets in the total."""
        return {
            "mrl": self.alpha,
            "sia": (1.0 - self.alpha) * self.w_sia,
            "pic": (1.0 - self.alpha) * self.w_pic,
            "scr": self.w_scr,
            "sir": self.w_sir,
        }

    def set_progress(self, fraction: float) -> None:
        """Fraction of training done, in [0, 1]; drives the progressive PIC schedule."""
        if self.pic is not None:
            self.pic.set_progress(fraction)
        elif not 0.0 <= fraction <= 1.0:
            raise ValueError(f"fraction must be in [0, 1], got {fraction}")

    def _normalise(self, name: str, value: Tensor) -> Tensor:
        i = TERM_NAMES.index(name)
        if self.training:
            with torch.no_grad():
                mag = value.detach().abs().float()
                ema = self.ema_decay * self.term_scale[i] + (1.0 - self.ema_decay) * mag
                # First step: start the EMA at the term's own magnitude (no device sync to test the flag).
                self.term_scale[i] = torch.where(self.term_scale_ready[i], ema, mag)
                self.term_scale_ready[i] = True
        # clone: the buffer is updated in place for the other terms below, and the division keeps its divisor
        # for backward.
        return value / self.term_scale[i].clone().clamp_min(1e-8)

    def forward(self, view_a: EncoderOutputs, view_b: EncoderOutputs) -> LossOutput:
        if view_a.hidden_size != self.hidden_size or view_b.hidden_size != self.hidden_size:
            raise ValueError(
                f"views have hidden size {view_a.hidden_size} and {view_b.hidden_size}, "
                f"expected hidden_size={self.hidden_size}"
            )
        if view_a.num_layers != view_b.num_layers or view_a.batch_size != view_b.batch_size:
            raise ValueError("view_a and view_b must have the same number of layers and batch size")
        pooled_a = view_a.pooled_all()  # L + 1 × (B, H)
        pooled_b = view_b.pooled_all()  # L + 1 × (B, H)

        raw: dict[str, Tensor] = {"mrl": self.mrl(pooled_a[-1], pooled_b[-1])}
        extra: dict[str, Tensor] = {}
        if self.sia is not None:
            attn, cka = self.sia.components(view_a.hidden_states, view_a.attention_mask)
            raw["sia"] = self.sia.attn_weight * attn + self.sia.cka_weight * cka
            extra["sia_attn"], extra["sia_cka"] = attn, cka
        if self.pic is not None:
            raw["pic"] = self.pic(pooled_a, pooled_b if self.pic_cross_view else None)
        if self.scr is not None:
            raw["scr"] = self.scr(pooled_a[-1])
        if self.sir is not None:
            raw["sir"] = self.sir(pooled_a[-1])

        coeff = self.coefficients()
        total = torch.zeros((), device=pooled_a[-1].device)
        for name, value in raw.items():
            scaled = self._normalise(name, value) if self.normalize_terms else value
            total = total + coeff[name] * scaled

        logged = {**raw, **extra, "total": total}
        values = torch.stack([v.detach().float().reshape(()) for v in logged.values()]).tolist()
        terms = dict(zip(logged.keys(), values, strict=True))
        if self.pic is not None:
            terms["pic_active_steps"] = float(self.pic.num_active_steps)
        return LossOutput(loss=total, terms=terms)

    def extra_repr(self) -> str:
        return (
            f"hidden_size={self.hidden_size}, alpha={self.alpha}, w_sia={self.w_sia}, w_pic={self.w_pic}, "
            f"w_scr={self.w_scr}, w_sir={self.w_sir}, normalize_terms={self.normalize_terms}, "
            f"ema_decay={self.ema_decay}, pic_cross_view={self.pic_cross_view}"
        )
