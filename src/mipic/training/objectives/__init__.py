"""Training objectives: each reads its own section of the config (``loss``, the ``LossConfig`` union in
``config.py``), builds its losses from it, and says which (dim, layer) budgets it trains. ``OBJECTIVES`` is the
one list of them; self-distillation (``distill``, :mod:`.distill`) is added on top of any.

Adding an objective takes three things: a loss file here, whose class has ``from_config(cfg, hidden_size,
num_layers)`` (an ``nn.Module`` whose ``forward(view_a, view_b)`` returns a ``LossOutput``) and
``trained_budgets(cfg, hidden_size, num_layers)``; its section in ``config.py`` (a member of ``LossConfig``);
and its line in ``OBJECTIVES``.
"""

from __future__ import annotations

from typing import Any, Protocol

from torch import nn

from mipic.training.config import NoObjective, ObjectiveSection, TrainConfig
from mipic.training.objectives.adaptive_layer import AdaptiveLayerObjective
from mipic.training.objectives.distill import build_distill, distill_budgets
from mipic.training.objectives.infonce import InfoNCEObjective
from mipic.training.objectives.mipic import MIPICObjective
from mipic.training.objectives.mrl import MRLObjective

__all__ = ["OBJECTIVES", "Objective", "build_distill", "build_objective", "distill_budgets", "objective_class",
           "trained_budgets"]


class Objective(Protocol):
    """What ``OBJECTIVES`` holds: a loss class that builds itself from its config section."""

    @classmethod
    def from_config(cls, cfg: Any, hidden_size: int, num_layers: int) -> nn.Module:
        """The loss module for ``cfg`` (its own section) on an encoder of this shape."""
        ...

    @classmethod
    def trained_budgets(cls, cfg: Any, hidden_size: int, num_layers: int) -> list[tuple[int, int]]:
        """The (dim, layer) budgets the loss built from ``cfg`` trains directly."""
        ...


#: ``loss.objective`` → the class that builds its loss; None where the objective has no loss of its own.
OBJECTIVES: dict[str, type[Objective] | None] = {
    "none": None,  # nothing is trained: the base encoder saved as a run
    "distill": None,  # self-distillation alone (the distill section)
    "infonce": InfoNCEObjective,
    "mrl": MRLObjective,
    "adaptive_layer": AdaptiveLayerObjective,
    "mipic": MIPICObjective,
}


def objective_class(cfg: ObjectiveSection) -> type[Objective] | None:
    """The registered class of ``cfg.objective``."""
    if cfg.objective not in OBJECTIVES:
        raise ValueError(f"objective {cfg.objective!r} is not registered (known: {', '.join(OBJECTIVES)})")
    return OBJECTIVES[cfg.objective]


def build_objective(cfg: ObjectiveSection, hidden_size: int, num_layers: int) -> nn.Module | None:
    """The loss module of ``cfg``'s objective, ``forward(view_a, view_b) -> LossOutput``; None for ``none`` and
    ``distill``, which have no loss of their own."""
    objective = objective_class(cfg)
    return objective.from_config(cfg, hidden_size, num_layers) if objective is not None else None


def trained_budgets(cfg: TrainConfig, hidden_size: int, num_layers: int) -> list[tuple[int, int]]:
    """The (dim, layer) budgets a run trains directly, sorted by (layer, dim), for the manifest: its objective's
    and its self-distillation's (none when nothing is trained)."""
    if isinstance(cfg.loss, NoObjective):
        return []
    objective = objective_class(cfg.loss)
    budgets = set(objective.trained_budgets(cfg.loss, hidden_size, num_layers)) if objective is not None else set()
    budgets.update(distill_budgets(cfg.distill, cfg.loss, hidden_size, num_layers))
    return sorted(budgets, key=lambda b: (b[1], b[0]))
