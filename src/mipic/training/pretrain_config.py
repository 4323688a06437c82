"""``mipic pretrain`` configuration: one pydantic model, loaded from YAML with dotted CLI overrides.

The model, data and train sections are the very classes of :mod:`mipic.training.config` (same keys,
same meaning, same ``--set`` syntax as ``mipic train``); masking, jepa and balance are the
pretraining's own. Saved as ``pretrain_config.yaml`` in the run dir, every checkpoint and ``final/``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from mipic.training.config import (
    DataSection,
    ModelSection,
    TrainConfig,
    TrainSection,
    load_yaml_config,
    save_yaml_config,
)
from mipic.training.losses.jepa_predictor import PredictorKind
from mipic.training.losses.latent_prediction import LatentLossKind
from mipic.training.losses.loss_balance import BalanceMode

PRETRAIN_CONFIG_FILE = "pretrain_config.yaml"

PretrainObjective = Literal["mlm", "mlm_jepa"]


class _Section(BaseModel):
    # forbid: a typo in a YAML key or a --set path must fail loudly (as in mipic.training.config).
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class MaskingSection(_Section):
    """Span masking (SpanBERT-style) and BERT's 80/10/10 replacement."""

    rate: float = Field(default=0.15, gt=0.0, lt=1.0, description="Fraction of the maskable tokens masked.")
    span_p: float = Field(
        default=0.2,
        gt=0.0,
        le=1.0,
        description="Span lengths ~ Geometric(span_p), clipped to max_span (SpanBERT: 0.2 → mean ~3.8); "
        "1 = single tokens.",
    )
    max_span: int = Field(default=10, ge=1)
    mask_token_prob: float = Field(default=0.8, ge=0.0, le=1.0, description="Masked positions shown as [MASK].")
    random_token_prob: float = Field(default=0.1, ge=0.0, le=1.0, description="... as a random token (rest: kept).")

    @model_validator(mode="after")
    def _probabilities(self) -> MaskingSection:
        if self.mask_token_prob + self.random_token_prob > 1.0:
            raise ValueError("mask_token_prob + random_token_prob must be <= 1")
        return self


class JEPASection(_Section):
    """Predictor, latent loss and EMA target of the ``mlm_jepa`` objective (unused by ``mlm``)."""

    predictor: PredictorKind = "mlp"
    predictor_depth: int = Field(default=2, ge=1, description="MLP hidden layers, or transformer layers.")
    predictor_width: int | None = Field(default=None, ge=1, description="None = the encoder's hidden size.")
    predictor_heads: int = Field(default=4, ge=1, description="Attention heads of a transformer predictor.")
    loss: LatentLossKind = "smooth_l1"
    smooth_l1_beta: float = Field(default=1.0, gt=0.0)
    target_layers: int = Field(
        default=1, ge=1, description="Average the target encoder's top K layers (each layer-normalised)."
    )
    ema_decay: float = Field(default=0.99, ge=0.0, le=1.0, description="EMA decay at step 0.")
    ema_decay_end: float = Field(
        default=0.999, ge=0.0, le=1.0, description="EMA decay at the last step (linear in between)."
    )


class BalanceSection(_Section):
    """How the MLM and latent losses are weighted (see :class:`mipic.training.losses.loss_balance.LossBalance`)."""

    mode: BalanceMode = "uncertainty"
    bound: float = Field(default=5.0, gt=0.0, description="|log-variance| (uncertainty) or |logit| (sigmoid) bound.")
    entropy_weight: float = Field(default=1.0, ge=0.0, description="λ of the sigmoid mode's entropy regulariser.")
    fixed_weight: float = Field(default=0.5, ge=0.0, le=1.0, description="MLM weight of the fixed mode.")
    init: float = Field(default=0.0, description="Initial log-variances / logit (0 = equal weights).")
    lr: float = Field(
        default=0.05,
        gt=0.0,
        description="LR of the balance parameters. Adam moves a parameter ~lr per step, so at the head lr "
        "(1e-3) a log-variance could move only ~0.2 in a 200-step run: it would never reach log L.",
    )


def _default_train() -> TrainSection:
    return TrainSection(output_dir=Path("runs/pretrain"))


class PretrainConfig(_Section):
    """Everything a pretraining run depends on; saved as ``pretrain_config.yaml`` next to its weights."""

    seed: int = 42
    objective: PretrainObjective = "mlm_jepa"
    model: ModelSection = Field(default_factory=ModelSection)
    masking: MaskingSection = Field(default_factory=MaskingSection)
    jepa: JEPASection = Field(default_factory=JEPASection)
    balance: BalanceSection = Field(default_factory=BalanceSection)
    data: DataSection = Field(default_factory=DataSection)
    train: TrainSection = Field(default_factory=_default_train)
    save_mlm: bool = Field(
        default=True, description="Also write output_dir/final_mlm: a BertForMaskedLM (encoder + tied MLM head)."
    )

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def as_train_config(self) -> TrainConfig:
        """The seed, model, data and train sections as a :class:`TrainConfig`, for the shared helpers of
        :mod:`mipic.training.trainer` (TrainingArguments, sentence loading) that read only those."""
        return TrainConfig(seed=self.seed, model=self.model, data=self.data, train=self.train)


def load_pretrain_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> PretrainConfig:
    """Read a YAML config (defaults when ``path`` is None) and apply ``section.key=value`` overrides."""
    return load_yaml_config(PretrainConfig, "pretraining", path, overrides)


def save_pretrain_config(config: PretrainConfig, path: str | Path) -> Path:
    """Write ``config`` as YAML (into ``path/pretrain_config.yaml`` when ``path`` is a directory)."""
    return save_yaml_config(config, path, PRETRAIN_CONFIG_FILE)
