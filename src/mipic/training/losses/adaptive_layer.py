"""2D Matryoshka: MRL at several layers plus a KL pull of shallow layers towards the last one."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mipic.training.losses._common import (
    check_increasing_ints,
    check_non_negative,
    check_positive,
    check_weights,
    cosine_logits,
)
from mipic.training.losses.mrl import MatryoshkaInfoNCELoss

LayerWeighting = Literal["uniform", "linear"]


class AdaptiveLayerMatryoshkaLoss(nn.Module):
    r"""2D Matryoshka loss on per-layer pooled embeddings of two views.

    .. math::

        \mathcal{L} = \sum_{\ell \in \mathcal{L}} v_\ell\, \mathcal{L}_{\mathrm{MRL}}(a^\ell, b^\ell)
            + \lambda_{KL} \cdot \frac{1}{|\mathcal{L}_{<L}|} \sum_{\ell \in \mathcal{L},\, \ell < L}
              \mathrm{KL}\big(\mathrm{sg}(P^L) \,\Vert\, P^\ell\big),
        \qquad P^\ell_{ij} = \mathrm{softmax}_j\big(\cos(a^\ell_i, b^\ell_j) / \tau_{KL}\big)

    where :math:`\mathcal{L}_{\mathrm{MRL}}` is :class:`MatryoshkaInfoNCELoss`, L is the last layer,
    ``sg`` is stop-gradient (the last layer is the self-distillation teacher) and the layer weight
    :math:`v_\ell` is 1 (``"uniform"``), :math:`1/(1 + L - \ell)` (``"linear"``: the last layer gets 1,
    each layer below it less) or given explicitly, one per entry of ``layers``. KL is over the in-batch
    similarity distribution of the full (untruncated) pooled embeddings, batch-mean reduced.

    Inputs:
        pooled_a: L + 1 tensors (B, H), pooled embeddings of view a indexed like ``hidden_states``
            (index 0 = embedding block, never used here; index ℓ = layer ℓ), e.g.
            ``EncoderOutputs.pooled_all()``.
        pooled_b: the same for view b (the positives).

    Returns:
        scalar tensor.

    Why not sentence-transformers' ``AdaptiveLayerLoss`` / ``Matryoshka2dLoss``: they need a
    ``SentenceTransformer`` object, monkey-patch its forward and re-run the wrapped loss once per layer.
    Our trainer already has every hidden state from one ``output_hidden_states=True`` pass, so all layers
    are covered every step (no layer sampling is needed to save compute). One deliberate difference: the
    ST KL term softmaxes each embedding vector over its features; here it compares in-batch similarity
    distributions, which do not depend on the (layer-specific) basis of the features.

    Reference:
        Li et al. 2024, "2D Matryoshka Sentence Embeddings" (arXiv:2402.14776).
    """

    def __init__(
        self,
        dims: Sequence[int],
        layers: Sequence[int],
        weights: Sequence[float] | None = None,
        layer_weighting: LayerWeighting | Sequence[float] = "uniform",
        temperature: float = 0.05,
        kl_weight: float = 1.0,
        kl_temperature: float = 0.3,
        symmetric: bool = False,
    ) -> None:
        super().__init__()
        self.mrl = MatryoshkaInfoNCELoss(dims, weights=weights, temperature=temperature, symmetric=symmetric)
        self.layers = check_increasing_ints(layers, "layers")
        if isinstance(layer_weighting, str):
            if layer_weighting not in ("uniform", "linear"):
                raise ValueError(
                    'layer_weighting must be "uniform", "linear" or one weight per layer, '
                    f"got {layer_weighting!r}"
                )
            self.layer_weighting: LayerWeighting | tuple[float, ...] = layer_weighting
        else:
            self.layer_weighting = check_weights(
                layer_weighting, len(self.layers), "layer_weighting", per="layer"
            )
        self.kl_weight = check_non_negative("kl_weight", kl_weight)
        self.kl_temperature = check_positive("kl_temperature", kl_temperature)

    @property
    def dims(self) -> tuple[int, ...]:
        return self.mrl.dims

    def layer_weights(self, num_layers: int) -> tuple[float, ...]:
        """:math:`v_\\ell` for each entry of ``layers`` in a model with ``num_layers`` layers."""
        if self.layer_weighting == "uniform":
            return (1.0,) * len(self.layers)
        if self.layer_weighting == "linear":
            return tuple(1.0 / (1 + num_layers - layer) for layer in self.layers)
        return tuple(self.layer_weighting)

    def kl_term(self, student_a: Tensor, student_b: Tensor, teacher_a: Tensor, teacher_b: Tensor) -> Tensor:
        """KL(teacher ‖ student) between in-batch similarity distributions, teacher detached."""
        teacher = F.softmax(
            cosine_logits(teacher_a, teacher_b, self.kl_temperature), dim=-1
        ).detach()  # (B, B)
        student = F.log_softmax(cosine_logits(student_a, student_b, self.kl_temperature), dim=-1)  # (B, B)
        return F.kl_div(student, teacher, reduction="batchmean")

    def forward(self, pooled_a: Sequence[Tensor], pooled_b: Sequence[Tensor]) -> Tensor:
        if len(pooled_a) != len(pooled_b):
            raise ValueError(f"pooled_a and pooled_b differ in length ({len(pooled_a)} vs {len(pooled_b)})")
        num_layers = len(pooled_a) - 1
        if self.layers[-1] > num_layers:
            raise ValueError(f"layer {self.layers[-1]} requested but the inputs hold {num_layers} layers")
        total = torch.zeros((), device=pooled_a[-1].device)
        for v, layer in zip(self.layer_weights(num_layers), self.layers, strict=True):
            total = total + v * self.mrl(pooled_a[layer], pooled_b[layer])
        shallow = [layer for layer in self.layers if layer < num_layers]
        if self.kl_weight > 0 and shallow:
            kl = torch.stack(
                [self.kl_term(pooled_a[ly], pooled_b[ly], pooled_a[-1], pooled_b[-1]) for ly in shallow]
            ).mean()
            total = total + self.kl_weight * kl
        return total

    def extra_repr(self) -> str:
        return (
            f"layers={self.layers}, layer_weighting={self.layer_weighting!r}, kl_weight={self.kl_weight}, "
            f"kl_temperature={self.kl_temperature}"
        )
