"""Self-distillation from a frozen teacher, added to any objective: ``SelfDistillLoss`` from the ``distill``
section, and the budgets it trains."""

from __future__ import annotations

from mipic.modeldir.manifest import default_dims
from mipic.training.config import DistillSection, ObjectiveSection, matryoshka_dims
from mipic.training.losses import SelfDistillLoss


def distill_budgets(
    cfg: DistillSection, objective: ObjectiveSection, hidden_size: int, num_layers: int
) -> list[tuple[int, int]]:
    """Every (dim, layer) the self-distillation term trains (none when its weight is 0): ``cfg.dims`` (else the
    objective's dims, else the default) at ``cfg.layers`` (else every layer)."""
    if cfg.weight <= 0:
        return []
    dims = cfg.dims or matryoshka_dims(objective) or default_dims(hidden_size)
    layers = cfg.layers or list(range(1, num_layers + 1))
    return [(int(d), int(layer)) for layer in layers for d in dims]


def build_distill(
    cfg: DistillSection, objective: ObjectiveSection, hidden_size: int, num_layers: int
) -> SelfDistillLoss | None:
    """The self-distillation loss of ``cfg`` (None when its weight is 0)."""
    budgets = distill_budgets(cfg, objective, hidden_size, num_layers)
    if not budgets:
        return None
    return SelfDistillLoss(budgets, weight=cfg.weight, temperature=cfg.temperature, anchor_weight=cfg.anchor_weight,
                           align_weight=cfg.align_weight, align_dim_weighting=cfg.align_dim_weighting)
