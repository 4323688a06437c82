"""MLMJEPALoss: the MLM + JEPA hybrid pretraining objective, latent prediction of an EMA target balanced
against MLM; and :func:`ema_update`, the target encoder's only update rule.

Its pieces, each a loss file of its own and usable alone:

* :func:`~mipic.training.losses.latent_prediction.layer_norm_targets` — the regression target: layer-normalised
  states of the EMA target encoder.
* :class:`~mipic.training.losses.jepa_predictor.JEPAPredictor` — maps the context encoder's states to
  predictions at the masked positions.
* :class:`~mipic.training.losses.latent_prediction.LatentPredictionLoss` — smooth-L1 or cosine distance between
  predictions and targets.
* :class:`~mipic.training.losses.loss_balance.LossBalance` — the learnable balance between the MLM and the
  latent loss.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mipic.training.losses._common import LossOutput
from mipic.training.losses.jepa_predictor import JEPAPredictor
from mipic.training.losses.latent_prediction import LatentPredictionLoss, layer_norm_targets
from mipic.training.losses.loss_balance import LossBalance


class MLMJEPALoss(nn.Module):
    r"""The hybrid objective: masked-token cross-entropy plus latent prediction of an EMA target.

    .. math::

        \mathcal{L}_{\mathrm{MLM}} = -\frac{1}{|M|}\sum_{i \in M} \log p_\theta(x_i \mid \tilde x),
        \qquad
        \mathcal{L}_{\mathrm{JEPA}} = \frac{1}{|M|}\sum_{i \in M}
            d\big(g_\phi(f_\theta(\tilde x))_i,\ \mathrm{sg}\,\mathrm{LN}(f_{\bar\theta}(x))_i\big)

        \mathcal{L} = \mathrm{Balance}(\mathcal{L}_{\mathrm{MLM}}, \mathcal{L}_{\mathrm{JEPA}})

    :math:`\tilde x` is the span-masked input, :math:`x` the clean one, :math:`M` the masked positions,
    :math:`f_\theta` the context encoder, :math:`f_{\bar\theta}` its EMA copy (no gradient,
    :func:`ema_update`), :math:`g_\phi` the :class:`JEPAPredictor`, :math:`d` the
    :class:`LatentPredictionLoss` and Balance the :class:`LossBalance`. The MLM term anchors the
    context encoder to the tokens, which is what keeps the latent term from collapsing to a constant
    representation; the latent term asks the masked positions to predict the clean sentence's
    *contextual* states, which spreads the sentence representations out (the reported effect of the
    hybrid is better uniformity than MLM alone).

    Inputs:
        mlm_loss: scalar, the cross-entropy over the masked tokens (computed by the MLM head's owner).
        context: (B, T, H) context-encoder states of the masked input.
        attention_mask: (B, T).
        positions: (B, T) bool, masked positions.
        target_states: K tensors (B, T, H) of the target encoder's top K layers on the clean input.

    Returns:
        :class:`LossOutput`: ``loss`` and terms ``mlm``, ``jepa``, ``balance_mlm`` (+ the balance's
        parameters) and ``total``.
    """

    def __init__(self, predictor: JEPAPredictor, latent: LatentPredictionLoss, balance: LossBalance) -> None:
        super().__init__()
        self.predictor = predictor
        self.latent = latent
        self.balance = balance

    def forward(
        self,
        mlm_loss: Tensor,
        context: Tensor,
        attention_mask: Tensor,
        positions: Tensor,
        target_states: Sequence[Tensor],
    ) -> LossOutput:
        with torch.no_grad():
            target = layer_norm_targets([t[positions] for t in target_states])  # (M, H)
        pred = self.predictor(context, attention_mask, positions)  # (M, H)
        jepa = self.latent(pred, target)
        total = self.balance(mlm_loss, jepa)
        values = torch.stack([mlm_loss.detach().float(), jepa.detach(), total.detach().float()]).tolist()
        terms = {"mlm": values[0], "jepa": values[1], **self.balance.terms(), "total": values[2]}
        return LossOutput(loss=total, terms=terms)


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, decay: float) -> None:
    r""":math:`\bar\theta \leftarrow \tau \bar\theta + (1 - \tau)\theta` for every parameter; buffers are copied.

    The target's parameters must not require gradients: this is their only update.
    """
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"decay must be in [0, 1], got {decay}")
    t_params = list(target.parameters())
    o_params = list(online.parameters())
    if len(t_params) != len(o_params):
        raise ValueError(f"target has {len(t_params)} parameter tensors, online has {len(o_params)}")
    for t, o in zip(t_params, o_params, strict=True):
        t.lerp_(o.detach().to(t.dtype), 1.0 - decay)
    for tb, ob in zip(target.buffers(), online.buffers(), strict=True):
        tb.copy_(ob)
