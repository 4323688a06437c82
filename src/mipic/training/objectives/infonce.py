"""InfoNCEObjective: plain SimCSE, InfoNCE on the last layer's full-width mean-pooled embedding."""

from __future__ import annotations

from torch import nn

from mipic.training.config import InfoNCESection
from mipic.training.losses import EncoderOutputs, InfoNCELoss, LossOutput


class InfoNCEObjective(nn.Module):
    """:class:`~mipic.training.losses.InfoNCELoss` between the two views' last-layer embeddings (full width).

    Inputs: two :class:`EncoderOutputs`; returns a :class:`LossOutput` with the term ``infonce``.
    Config: ``loss: {objective: infonce, temperature, symmetric}``.
    """

    def __init__(self, loss: InfoNCELoss) -> None:
        super().__init__()
        self.loss = loss

    @classmethod
    def from_config(cls, cfg: InfoNCESection, hidden_size: int, num_layers: int) -> InfoNCEObjective:
        return cls(InfoNCELoss(temperature=cfg.temperature, symmetric=cfg.symmetric))

    @classmethod
    def trained_budgets(cls, cfg: InfoNCESection, hidden_size: int, num_layers: int) -> list[tuple[int, int]]:
        return [(hidden_size, num_layers)]

    def forward(self, view_a: EncoderOutputs, view_b: EncoderOutputs) -> LossOutput:
        last = view_a.num_layers
        value = self.loss(view_a.pooled(last), view_b.pooled(last))
        v = float(value.detach())
        return LossOutput(loss=value, terms={"infonce": v, "total": v})
