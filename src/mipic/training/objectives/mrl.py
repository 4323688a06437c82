"""MRLObjective: Matryoshka InfoNCE on the last layer, logging the InfoNCE of every dim."""

from __future__ import annotations

import torch
from torch import nn

from mipic.modeldir.manifest import default_dims
from mipic.training.config import MRLSection
from mipic.training.losses import EncoderOutputs, LossOutput, MatryoshkaInfoNCELoss


class MRLObjective(nn.Module):
    """:class:`~mipic.training.losses.MatryoshkaInfoNCELoss` between the two views' last-layer embeddings.

    Inputs: two :class:`EncoderOutputs`; returns a :class:`LossOutput` with one term per dim (``mrl_d16``, ...).
    Config: ``loss: {objective: mrl, dims, weights, temperature, symmetric}``.
    """

    def __init__(self, loss: MatryoshkaInfoNCELoss) -> None:
        super().__init__()
        self.loss = loss

    @classmethod
    def from_config(cls, cfg: MRLSection, hidden_size: int, num_layers: int) -> MRLObjective:
        return cls(MatryoshkaInfoNCELoss(cfg.dims or default_dims(hidden_size), weights=cfg.weights,
                                         temperature=cfg.temperature, symmetric=cfg.symmetric))

    @classmethod
    def trained_budgets(cls, cfg: MRLSection, hidden_size: int, num_layers: int) -> list[tuple[int, int]]:
        return [(d, num_layers) for d in cfg.dims or default_dims(hidden_size)]

    def forward(self, view_a: EncoderOutputs, view_b: EncoderOutputs) -> LossOutput:
        last = view_a.num_layers
        per_dim = self.loss.per_dim(view_a.pooled(last), view_b.pooled(last))
        total = per_dim[0] * self.loss.weights[0]
        for w, value in zip(self.loss.weights[1:], per_dim[1:], strict=True):
            total = total + w * value
        logged = [*per_dim, total]
        values = torch.stack([v.detach().float() for v in logged]).tolist()  # one host sync
        names = [f"mrl_d{d}" for d in self.loss.dims] + ["total"]
        return LossOutput(loss=total, terms=dict(zip(names, values, strict=True)))
