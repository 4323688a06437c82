"""Training losses of the MIPIC method, on plain tensors so that our own trainer can call them: one file per loss
class, each with its equation, inputs and references in the docstring.

Budgets are (dim, layer) pairs; layer ℓ indexes ``hidden_states[ℓ]`` of a Hugging Face encoder run with
``output_hidden_states=True``. The losses know nothing of the training config: :mod:`mipic.training.objectives`
builds them from it.
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
from mipic.training.losses.jepa_predictor import JEPAPredictor
from mipic.training.losses.latent_prediction import LatentPredictionLoss, layer_norm_targets
from mipic.training.losses.loss_balance import LossBalance
from mipic.training.losses.mipic import TERM_NAMES, MIPICLoss
from mipic.training.losses.mlm_jepa import MLMJEPALoss, ema_update
from mipic.training.losses.mrl import MatryoshkaInfoNCELoss
from mipic.training.losses.pic import PICLoss
from mipic.training.losses.sia import SIALoss, linear_cka, masked_kl
from mipic.training.losses.soft_collapse import SoftCollapseRegularizer
from mipic.training.losses.spectral_isotropy import SpectralIsotropyRegularizer

__all__ = [
    "TERM_NAMES",
    "AdaptiveLayerMatryoshkaLoss",
    "EncoderOutputs",
    "InfoNCELoss",
    "JEPAPredictor",
    "LatentPredictionLoss",
    "LossBalance",
    "LossOutput",
    "MIPICLoss",
    "MLMJEPALoss",
    "MatryoshkaInfoNCELoss",
    "PICLoss",
    "SIALoss",
    "SelfDistillLoss",
    "SoftCollapseRegularizer",
    "SpectralIsotropyRegularizer",
    "cosine_logits",
    "distill_kl",
    "ema_update",
    "info_nce",
    "layer_norm_targets",
    "linear_cka",
    "masked_kl",
    "mean_pool",
    "similarity_logits",
    "truncate_normalize",
]
