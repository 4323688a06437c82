"""MIPICObjective: the MIPIC loss with its terms built from the ``mipic`` config section."""

from __future__ import annotations

from mipic.modeldir.manifest import default_dims
from mipic.training.config import MIPICSection
from mipic.training.losses import (
    MatryoshkaInfoNCELoss,
    MIPICLoss,
    PICLoss,
    SIALoss,
    SoftCollapseRegularizer,
    SpectralIsotropyRegularizer,
)
from mipic.training.losses._common import check_increasing_ints


class MIPICObjective(MIPICLoss):
    """:class:`~mipic.training.losses.MIPICLoss` (its equation and inputs), built from a config section.

    Config: ``loss: {objective: mipic, ...}``, see :class:`~mipic.training.config.MIPICSection`. Each term is
    built only when it counts: SIA with ``sia_layers`` set, ``w_sia > 0`` and ``alpha < 1``; PIC likewise with
    ``chain``; SCR and SIR when their weight is above 0. Trains MRL's dims at the last layer and each PIC chain
    checkpoint.
    """

    @classmethod
    def from_config(cls, cfg: MIPICSection, hidden_size: int, num_layers: int) -> MIPICObjective:
        mrl = MatryoshkaInfoNCELoss(cfg.dims or default_dims(hidden_size), weights=cfg.weights,
                                    temperature=cfg.temperature)
        sia = None
        if cfg.sia_layers is not None and cfg.w_sia > 0 and cfg.alpha < 1:
            sia_dims = tuple(d for d in mrl.dims if d < hidden_size) if cfg.sia_dims is None else tuple(cfg.sia_dims)
            if not sia_dims:
                raise ValueError("sia_dims is empty: no dim in dims is below hidden_size; pass sia_dims")
            sia = SIALoss(hidden_size, sia_dims, cfg.sia_layers, attn_weight=cfg.sia_attn_weight,
                          cka_weight=cfg.sia_cka_weight, attn_temperature=cfg.sia_attn_temperature,
                          k_min=cfg.sia_k_min, gamma_min=cfg.sia_gamma[0], gamma_max=cfg.sia_gamma[1],
                          kl_direction=cfg.sia_kl_direction, include_cls=cfg.sia_include_cls)
        pic = None
        if cfg.chain is not None and cfg.w_pic > 0 and cfg.alpha < 1:
            pic = PICLoss(cfg.chain, projector_hidden=cfg.pic_projector_hidden, temperature=cfg.temperature,
                          progressive=cfg.pic_progressive)
        mic_dims = mrl.dims if cfg.mic_dims is None else check_increasing_ints(cfg.mic_dims, "mic_dims")
        scr = SoftCollapseRegularizer(mic_dims) if cfg.w_scr > 0 else None
        sir = SpectralIsotropyRegularizer(mic_dims, t=cfg.sir_t) if cfg.w_sir > 0 else None
        return cls(hidden_size, mrl, sia, pic, scr, sir, alpha=cfg.alpha, w_sia=cfg.w_sia, w_pic=cfg.w_pic,
                   w_scr=cfg.w_scr, w_sir=cfg.w_sir, pic_cross_view=cfg.pic_cross_view,
                   normalize_terms=cfg.normalize_terms, ema_decay=cfg.ema_decay)

    @classmethod
    def trained_budgets(cls, cfg: MIPICSection, hidden_size: int, num_layers: int) -> list[tuple[int, int]]:
        # MRL trains every dim at the last layer; PIC trains each chain checkpoint.
        dims = cfg.dims or default_dims(hidden_size)
        return [(d, num_layers) for d in dims] + [(d, layer) for d, layer in cfg.chain or ()]
