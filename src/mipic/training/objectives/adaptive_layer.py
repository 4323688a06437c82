"""AdaptiveLayerObjective: 2D Matryoshka over the layers of ``loss.layers``."""

from __future__ import annotations

from torch import nn

from mipic.modeldir.manifest import default_dims
from mipic.training.config import AdaptiveLayerSection
from mipic.training.losses import AdaptiveLayerMatryoshkaLoss, EncoderOutputs, LossOutput


class AdaptiveLayerObjective(nn.Module):
    """:class:`~mipic.training.losses.AdaptiveLayerMatryoshkaLoss` on every layer's pooled embedding of the views.

    Inputs: two :class:`EncoderOutputs`; returns a :class:`LossOutput` with the term ``adaptive_layer``.
    Config: ``loss: {objective: adaptive_layer, dims, layers, weights, layer_weighting, kl_weight, kl_temperature,
    temperature, symmetric}``.
    """

    def __init__(self, loss: AdaptiveLayerMatryoshkaLoss) -> None:
        super().__init__()
        self.loss = loss

    @classmethod
    def from_config(cls, cfg: AdaptiveLayerSection, hidden_size: int, num_layers: int) -> AdaptiveLayerObjective:
        return cls(AdaptiveLayerMatryoshkaLoss(
            cfg.dims or default_dims(hidden_size), cfg.layers or list(range(1, num_layers + 1)),
            weights=cfg.weights, layer_weighting=cfg.layer_weighting, temperature=cfg.temperature,
            kl_weight=cfg.kl_weight, kl_temperature=cfg.kl_temperature, symmetric=cfg.symmetric,
        ))

    @classmethod
    def trained_budgets(cls, cfg: AdaptiveLayerSection, hidden_size: int, num_layers: int) -> list[tuple[int, int]]:
        dims = cfg.dims or default_dims(hidden_size)
        return [(d, layer) for layer in cfg.layers or range(1, num_layers + 1) for d in dims]

    def forward(self, view_a: EncoderOutputs, view_b: EncoderOutputs) -> LossOutput:
        value = self.loss(view_a.pooled_all(), view_b.pooled_all())
        v = float(value.detach())
        return LossOutput(loss=value, terms={"adaptive_layer": v, "total": v})
