"""Training configuration: one pydantic model, loaded from YAML, overridden from the CLI, saved with every run.

A run is fully described by its ``train_config.yaml``: ``mipic train --config that.yaml`` reproduces it
(same seed, same data, same steps). Overrides use dotted keys whose values are parsed as YAML, so
``--set train.max_steps=50``, ``--set loss.alpha=0.5``, ``--set loss.sia_layers=[2,3]`` and
``--set model.init=null`` all do what they look like.
"""

from __future__ import annotations

import copy
import inspect
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mipic.training.losses import AdaptiveLayerMatryoshkaLoss, MatryoshkaInfoNCELoss, MIPICLoss, SelfDistillLoss
from mipic.training.losses.distill import AlignDimWeighting

logger = logging.getLogger(__name__)

CONFIG_FILE = "train_config.yaml"

Objective = Literal["none", "infonce", "mrl", "adaptive_layer", "mipic", "distill"]


class _Section(BaseModel):
    # forbid: a typo in a YAML key or a --set path must fail loudly, not train with a silent default.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class LoraSection(_Section):
    """Train the encoder as a low-rank adapter (PEFT LoRA) instead of every weight; merged at export.

    Why: an adapter of a few MB can be committed and shipped (weights cannot come from a model hub here),
    and a low rank limits how far the encoder can drift from the base model.
    """

    enabled: bool = False
    r: int = Field(default=16, ge=1, description="Rank of each adapter.")
    alpha: int = Field(default=32, ge=1, description="LoRA scaling numerator (scale = alpha / r).")
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(
        default_factory=lambda: ["query", "key", "value", "attention.output.dense", "intermediate.dense",
                                 "output.dense"],
        description="Module-name suffixes that get an adapter (BERT names; the pooler is left out).",
    )


class ModelSection(_Section):
    """Which encoder to train and where its starting weights come from."""

    base: Path | None = Field(
        default=None,
        description="Hugging Face checkpoint dir of the base encoder (architecture + tokenizer); "
        "None = the packaged all-MiniLM-L6-v2.",
    )
    init: Path | None = Field(
        default=None,
        description="Start from these weights instead of the base's: an encoder dir (save_pretrained, "
        "e.g. a run's final/) or a Trainer checkpoint-N dir of an earlier run (its encoder weights).",
    )
    dropout: float | None = Field(
        default=None,
        ge=0.0,
        lt=1.0,
        description="Override hidden and attention dropout. The two SimCSE views differ only by dropout, "
        "so 0 makes them identical; None keeps the checkpoint's value (0.1 for MiniLM).",
    )
    lora: LoraSection = Field(default_factory=LoraSection)
    heads_init: Path | Literal["default"] | None = Field(
        default=None,
        description="Train exit heads jointly, starting from these (a model directory with heads.npz, or "
        "the file itself, as `mipic heads fit` writes; 'default' = the default model's committed heads). "
        "None = no heads during training (plain read-out; export can fit them afterwards).",
    )
    train_last_head: bool = Field(
        default=False,
        description="Also train the last layer's head (kept orthogonal). False keeps it fixed, so the full "
        "budget's read-out stays a rotation of the encoder's last layer.",
    )


def loss_default(loss: Callable[..., Any], name: str) -> Any:
    """The default of ``name`` in a loss constructor's signature: each loss hyperparameter's default is
    spelled once, beside its equation in the loss's file, and the config reads it from there."""
    return inspect.signature(loss).parameters[name].default


class LossSection(_Section):
    """Hyperparameters of the loss constructors in :mod:`mipic.training.losses`, under the constructors' own
    names and with their defaults (``loss_default``); ``build_objective`` passes them on by name.

    Only the fields an objective uses are read: ``infonce`` → temperature, symmetric; ``mrl`` → dims,
    weights, temperature, symmetric; ``adaptive_layer`` → dims, weights, layers, layer_weighting,
    kl_weight, kl_temperature, temperature, symmetric; ``mipic`` → dims, chain, sia_layers and the rest;
    any objective → the self-distillation fields (``distill_*``, ``anchor_weight``) when ``distill_weight > 0``.
    """

    dims: list[int] | None = Field(
        default=None, description="Matryoshka dims; None = 16, 32, 64, 128, 256 below the hidden size + full."
    )
    weights: list[float] | None = Field(default=None, description="One MRL weight per dim (None = all 1).")
    temperature: float = Field(default=loss_default(MatryoshkaInfoNCELoss, "temperature"), gt=0)
    symmetric: bool = loss_default(MatryoshkaInfoNCELoss, "symmetric")
    # 2D Matryoshka (adaptive_layer)
    layers: list[int] | None = Field(default=None, description="Layers trained by 2D Matryoshka; None = all.")
    layer_weighting: Literal["uniform", "linear"] | list[float] = loss_default(
        AdaptiveLayerMatryoshkaLoss, "layer_weighting")
    kl_weight: float = Field(default=loss_default(AdaptiveLayerMatryoshkaLoss, "kl_weight"), ge=0)
    kl_temperature: float = Field(default=loss_default(AdaptiveLayerMatryoshkaLoss, "kl_temperature"), gt=0)
    # MIPIC
    chain: list[tuple[int, int]] | None = Field(
        default=None, description="PIC chain of (dim, layer) budgets, cheapest first; None disables PIC."
    )
    sia_layers: list[int] | None = Field(default=None, description="SIA student layers; None disables SIA.")
    alpha: float = Field(default=loss_default(MIPICLoss, "alpha"), ge=0.0, le=1.0)
    w_sia: float = Field(default=loss_default(MIPICLoss, "w_sia"), ge=0)
    w_pic: float = Field(default=loss_default(MIPICLoss, "w_pic"), ge=0)
    w_scr: float = Field(default=loss_default(MIPICLoss, "w_scr"), ge=0)
    w_sir: float = Field(default=loss_default(MIPICLoss, "w_sir"), ge=0)
    sia_dims: list[int] | None = None
    sia_attn_weight: float = Field(default=loss_default(MIPICLoss, "sia_attn_weight"), ge=0)
    sia_cka_weight: float = Field(default=loss_default(MIPICLoss, "sia_cka_weight"), ge=0)
    sia_attn_temperature: float = Field(default=loss_default(MIPICLoss, "sia_attn_temperature"), gt=0)
    sia_k_min: int = Field(default=loss_default(MIPICLoss, "sia_k_min"), ge=1)
    sia_gamma: tuple[float, float] = loss_default(MIPICLoss, "sia_gamma")
    sia_kl_direction: Literal["student_teacher", "teacher_student"] = loss_default(MIPICLoss, "sia_kl_direction")
    sia_include_cls: bool = loss_default(MIPICLoss, "sia_include_cls")
    pic_projector_hidden: int | None = Field(default=None, ge=1)
    pic_progressive: bool = loss_default(MIPICLoss, "pic_progressive")
    pic_cross_view: bool = loss_default(MIPICLoss, "pic_cross_view")
    mic_dims: list[int] | None = None
    sir_t: float = Field(default=loss_default(MIPICLoss, "sir_t"), gt=0)
    normalize_terms: bool = loss_default(MIPICLoss, "normalize_terms")
    ema_decay: float = Field(default=loss_default(MIPICLoss, "ema_decay"), ge=0.0, lt=1.0)
    # Self-distillation from a frozen teacher (losses/distill.py), added to any objective
    distill_weight: float = Field(default=0.0, ge=0, description="Weight of SelfDistillLoss; 0 = off.")
    distill_temperature: float = Field(default=loss_default(SelfDistillLoss, "temperature"), gt=0)
    distill_layers: list[int] | None = Field(default=None, description="Student layers; None = all.")
    distill_dims: list[int] | None = Field(default=None, description="Prefixes per layer; None = dims.")
    anchor_weight: float = Field(default=loss_default(SelfDistillLoss, "anchor_weight"), ge=0,
                                 description="Last layer, full width: 1 - cos to the teacher.")
    align_weight: float = Field(default=loss_default(SelfDistillLoss, "align_weight"), ge=0,
                                description="Every distilled (dim, layer): 1 - cos to the teacher's first dim "
                                "coordinates in the last layer's head coordinates (one space for every exit).")
    align_dim_weighting: AlignDimWeighting = Field(
        default=loss_default(SelfDistillLoss, "align_dim_weighting"),
        description="Weights of the align term's budgets: 'uniform', or 'linear' (∝ dim: wide prefixes weigh most).")


class DataSection(_Section):
    """Unlabeled training sentences (train split of the packaged corpora, or a file)."""

    n_sentences: int | None = Field(default=20_000, ge=1, description="None = every train sentence.")
    max_length: int = Field(default=64, ge=2, description="Tokens per sentence; 64 keeps CPU steps fast.")
    seed: int = Field(default=0, description="Which sentences are drawn, and their order before shuffling.")
    sources: list[str] | None = Field(default=None, description="Corpus names; None = every available one.")
    data_dir: Path | None = Field(default=None, description="Corpus cache; None = $MIPIC_DATA_DIR or ~/.cache.")
    pair_kinds: list[str] = Field(
        default_factory=list,
        description="Weak positive pairs mixed into the batches (see data/pairs.py: title_body, "
        "title_subtitle, title_first_sentence, lemmas_gloss, gloss_example); empty = sentences only (SimCSE).",
    )
    n_pairs: int | None = Field(default=10_000, ge=1, description="Pairs drawn (None = all); sentences are "
                                "their own positive (two dropout views).")
    train_file: Path | None = Field(
        default=None,
        description="One sentence per line, used instead of the packaged corpora. Not filtered against "
        "the eval split: keeping eval texts out is then the file's responsibility.",
    )


class TrainSection(_Section):
    """Optimisation and checkpointing, mapped onto ``transformers.TrainingArguments``."""

    output_dir: Path = Path("runs/mipic")
    batch_size: int = Field(default=32, ge=2, description="Sentences per step (in-batch negatives).")
    grad_accum: int = Field(default=1, ge=1)
    lr: float = Field(default=3e-5, gt=0)
    head_lr: float | None = Field(
        default=None,
        gt=0,
        description="LR of the loss's own parameters (SIA projections, PIC projectors). They start from "
        "random init while the encoder is pretrained, so they usually want more than lr. None = lr.",
    )
    max_steps: int = Field(default=200, ge=1)
    warmup_steps: int = Field(default=0, ge=0)
    weight_decay: float = Field(default=0.0, ge=0)
    lr_scheduler: str = "linear"
    max_grad_norm: float = Field(default=1.0, ge=0)
    fp16: bool = False
    bf16: bool = False
    logging_steps: int = Field(default=10, ge=1)
    save_steps: int = Field(default=100, ge=1)
    save_total_limit: int | None = Field(default=2, ge=1, description="Checkpoints kept; None = all.")
    resume: bool | Path | None = Field(
        default=None,
        description="true = the latest checkpoint-N in output_dir; a path = that checkpoint.",
    )
    group_by_length: bool = Field(
        default=True,
        description="Batch sentences of similar token length (within random groups of 50 batches). Padding "
        "is wasted compute: at max_length 64 this makes CPU steps ~1.5x faster; it also removes length "
        "as an in-batch shortcut for telling negatives apart.",
    )
    dataloader_num_workers: int = Field(default=0, ge=0)
    disable_tqdm: bool = False
    report_to: list[str] = Field(
        default_factory=list,
        description="Experiment trackers of the Hugging Face Trainer, e.g. [tensorboard] (logs in "
        "output_dir/logs); empty = none.",
    )

    @model_validator(mode="after")
    def _one_precision(self) -> TrainSection:
        if self.fp16 and self.bf16:
            raise ValueError("fp16 and bf16 are mutually exclusive")
        return self


class ExportSection(_Section):
    """Export of the final encoder to the staged ONNX format (``output_dir/onnx``)."""

    enabled: bool = False
    name: str | None = Field(default=None, description="Manifest name; None = the output dir's name.")
    version: str = "1"
    dims: list[int] | None = Field(default=None, description="Served dims; None = the exporter's default.")
    trained_budgets: list[tuple[int, int]] | None = Field(
        default=None, description="(dim, layer) pairs; None = the budgets the objective trained."
    )
    max_seq_length: int | None = Field(default=None, ge=2)

    @field_validator("version", mode="before")
    @classmethod
    def _version_as_text(cls, value: object) -> object:
        # ``version: 2`` in YAML (or --set export.version=2) parses as an int; the manifest wants text.
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


class TrainConfig(_Section):
    """Everything a training run depends on; saved as ``train_config.yaml`` next to its weights."""

    seed: int = 42
    objective: Objective = "mipic"
    model: ModelSection = Field(default_factory=ModelSection)
    loss: LossSection = Field(default_factory=LossSection)
    data: DataSection = Field(default_factory=DataSection)
    train: TrainSection = Field(default_factory=TrainSection)
    export: ExportSection = Field(default_factory=ExportSection)

    @field_validator("export", mode="before")
    @classmethod
    def _export_shorthand(cls, value: object) -> object:
        # ``export: true`` in YAML is the common case; the section form sets name/version/dims too.
        return {"enabled": value} if isinstance(value, bool) else value

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML types (paths as strings, tuples as lists)."""
        return self.model_dump(mode="json")


# --------------------------------------------------------------------------- overrides


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"train.max_steps=50"`` → (["train", "max_steps"], 50); the value is parsed as YAML."""
    key, sep, raw = item.partition("=")
    path = [part.strip() for part in key.split(".")]
    if not sep or not all(path):
        raise ValueError(f"override must look like section.key=value, got {item!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ValueError(f"override {item!r}: value is not valid YAML ({exc})") from exc
    return path, value


def apply_overrides(data: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """A copy of ``data`` with each dotted ``key=value`` set (intermediate sections created)."""
    out: dict[str, Any] = copy.deepcopy(dict(data))
    for item in overrides:
        path, value = parse_override(item)
        node = out
        for i, part in enumerate(path[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif isinstance(child, bool) and ".".join(path[: i + 1]) == "export":
                child = node[part] = {"enabled": child}  # expand the ``export: true`` shorthand
            elif not isinstance(child, dict):
                raise ValueError(f"override {item!r}: {'.'.join(path[: i + 1])} is not a section")
            node = child
        node[path[-1]] = value
    return out


ConfigT = TypeVar("ConfigT", bound=BaseModel)


def load_yaml_config(
    cls: type[ConfigT], kind: str, path: str | Path | None = None, overrides: Sequence[str] = ()
) -> ConfigT:
    """Read a YAML config of model ``cls`` (defaults when ``path`` is None), apply ``section.key=value``
    overrides and validate; errors name each offending key: ``invalid {kind} config (origin): ...``."""
    data: dict[str, Any] = {}
    origin = "defaults"
    if path is not None:
        origin = str(path)
        loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        if loaded is not None and not isinstance(loaded, dict):
            raise ValueError(f"invalid {kind} config ({origin}): the top level must be a mapping")
        data = loaded or {}
    if overrides:
        origin += " + overrides"
    try:
        return cls.model_validate(apply_overrides(data, overrides))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}" for err in exc.errors()
        )
        raise ValueError(f"invalid {kind} config ({origin}): {problems}") from exc


def save_yaml_config(config: BaseModel, path: str | Path, file_name: str) -> Path:
    """Write ``config`` as YAML (into ``path/file_name`` when ``path`` is a directory)."""
    path = Path(path)
    if path.is_dir():
        path = path / file_name
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False, default_flow_style=None)
    path.write_text(text, encoding="utf-8")
    return path


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> TrainConfig:
    """Read a YAML config (or start from the defaults when ``path`` is None) and apply overrides."""
    return load_yaml_config(TrainConfig, "training", path, overrides)


def save_config(config: TrainConfig, path: str | Path) -> Path:
    """Write ``config`` as YAML (the file :func:`load_config` reads back to an equal config)."""
    return save_yaml_config(config, path, CONFIG_FILE)
