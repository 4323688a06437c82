"""Training losses of the MIPIC method, on plain tensors so that our own trainer can call them.

See each module's docstring for the equation, inputs and references. Budgets are (dim, layer) pairs;
layer ℓ indexes ``hidden_states[ℓ]`` of a Hugging Face encoder run with ``output_hidden_states=True``.
"""

from mipic.training.losses._common import (
    EncoderOutputs,
    LossOutput,
    cosine_logits,
    mean_pool,
    truncate_normalize,
)
from mipic.training.losses.adaptive_layer import AdaptiveLayerMatryoshkaLoss
from mipic.training.losses.distill import SelfDistillLoss, distill_kl, similarity_logits
from mipic.training.losses.infonce import InfoNCELoss, info_nce
from mipic.training.losses.mic import SoftCollapseRegularizer, SpectralIsotropyRegularizer
from mipic.training.losses.mipic import TERM_NAMES, MIPICLoss
from mipic.training.losses.mrl import MatryoshkaInfoNCELoss
from mipic.training.losses.pic import PICLoss
from mipic.training.losses.sia import SIALoss, linear_cka, masked_kl

__all__ = [
    "TERM_NAMES",
    "AdaptiveLayerMatryoshkaLoss",
    "EncoderOutputs",
    "InfoNCELoss",
    "LossOutput",
    "MIPICLoss",
    "MatryoshkaInfoNCELoss",
    "PICLoss",
    "SIALoss",
    "SelfDistillLoss",
    "SoftCollapseRegularizer",
    "SpectralIsotropyRegularizer",
    "cosine_logits",
    "distill_kl",
    "info_nce",
    "linear_cka",
    "masked_kl",
    "mean_pool",
    "similarity_logits",
    "truncate_normalize",
]
