"""Training configuration: one pydantic model, loaded from YAML, overridden from the CLI, saved with every run.

A run is fully described by its ``train_config.yaml``: ``mipic train --config that.yaml`` reproduces it
(same seed, same data, same steps). Overrides use dotted keys whose values are parsed as YAML, so
``--set train.max_steps=50``, ``--set loss.alpha=0.5``, ``--set loss.sia_layers=[2,3]``,
``--set 'loss={objective: mrl}'`` (another objective, its defaults) and ``--set model.init=null`` all do what
they look like.

The ``loss`` section is one objective's own (``loss.objective`` picks it: ``none``, ``distill``, ``infonce``,
``mrl``, ``adaptive_layer``, ``mipic``); ``distill`` adds self-distillation to any of them. No torch here: the
losses are built from these sections in :mod:`mipic.training.objectives`.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

logger = logging.getLogger(__name__)

CONFIG_FILE = "train_config.yaml"


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
    init: Path | Literal["default"] | None = Field(
        default=None,
        description="Start the adapter from this saved PEFT adapter (a directory with adapter_config.json, "
        "e.g. a run's final/adapter; 'default' = the default model's committed adapter) instead of zeros: a "
        "continuation of an earlier run. The teacher stays the base encoder as loaded, never the adapted one. "
        "Its rank, alpha and target modules must equal r, alpha and target_modules here (checked).",
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


# --------------------------------------------------------------------------- objectives
#
# One section per objective, told apart by ``objective`` (a discriminated union): each objective in
# ``mipic.training.objectives`` reads its own section and builds its losses from it. Defaults are spelled here
# and again beside each loss's equation (its constructor); a test pins that the two agree.

LayerWeighting = Literal["uniform", "linear"]
KLDirection = Literal["student_teacher", "teacher_student"]
AlignDimWeighting = Literal["uniform", "linear"]


class ObjectiveSection(_Section):
    """What every objective's section has: its name, the tag of the ``loss`` union."""

    objective: str


class NoObjective(ObjectiveSection):
    """``none``: nothing is trained; the base encoder is saved as a run (the untrained reference)."""

    objective: Literal["none"] = "none"


class DistillOnlySection(ObjectiveSection):
    """``distill``: no objective of its own; the run trains by self-distillation alone (``distill.weight > 0``)."""

    objective: Literal["distill"] = "distill"


class InfoNCESection(ObjectiveSection):
    """``infonce``: plain SimCSE, InfoNCE on the last layer's full-width embedding (objectives/infonce.py)."""

    objective: Literal["infonce"] = "infonce"
    temperature: float = Field(default=0.05, gt=0)
    symmetric: bool = False


class MatryoshkaSection(ObjectiveSection):
    """The Matryoshka prefixes an objective trains; self-distillation trains the same ones unless
    ``distill.dims`` says otherwise."""

    dims: list[int] | None = Field(
        default=None, description="Matryoshka dims; None = 16, 32, 64, 128, 256 below the hidden size + full."
    )


class MRLSection(MatryoshkaSection):
    """``mrl``: Matryoshka InfoNCE on the last layer (objectives/mrl.py)."""

    objective: Literal["mrl"] = "mrl"
    weights: list[float] | None = Field(default=None, description="One MRL weight per dim (None = all 1).")
    temperature: float = Field(default=0.05, gt=0)
    symmetric: bool = False


class AdaptiveLayerSection(MatryoshkaSection):
    """``adaptive_layer``: 2D Matryoshka, MRL at several layers + a KL pull to the last layer
    (objectives/adaptive_layer.py)."""

    objective: Literal["adaptive_layer"] = "adaptive_layer"
    weights: list[float] | None = Field(default=None, description="One MRL weight per dim (None = all 1).")
    temperature: float = Field(default=0.05, gt=0)
    symmetric: bool = False
    layers: list[int] | None = Field(default=None, description="Layers trained by 2D Matryoshka; None = all.")
    layer_weighting: LayerWeighting | list[float] = "uniform"
    kl_weight: float = Field(default=1.0, ge=0)
    kl_temperature: float = Field(default=0.3, gt=0)


class MIPICSection(MatryoshkaSection):
    """``mipic``: MRL + SIA + PIC (+ MIC's SCR and SIR), objectives/mipic.py; a term whose weight is 0 (or, for SIA
    and PIC, when ``alpha`` is 1 or ``sia_layers`` / ``chain`` is None) is not built."""

    objective: Literal["mipic"] = "mipic"
    weights: list[float] | None = Field(default=None, description="One MRL weight per dim (None = all 1).")
    temperature: float = Field(default=0.05, gt=0)
    chain: list[tuple[int, int]] | None = Field(
        default=None, description="PIC chain of (dim, layer) budgets, cheapest first; None disables PIC."
    )
    sia_layers: list[int] | None = Field(default=None, description="SIA student layers; None disables SIA.")
    alpha: float = Field(default=0.4, ge=0.0, le=1.0)
    w_sia: float = Field(default=1.0, ge=0)
    w_pic: float = Field(default=1.0, ge=0)
    w_scr: float = Field(default=0.1, ge=0)
    w_sir: float = Field(default=0.1, ge=0)
    sia_dims: list[int] | None = Field(default=None, description="SIA prefixes; None = the dims below hidden.")
    sia_attn_weight: float = Field(default=1.0, ge=0)
    sia_cka_weight: float = Field(default=1.0, ge=0)
    sia_attn_temperature: float = Field(default=1.0, gt=0)
    sia_k_min: int = Field(default=8, ge=1)
    sia_gamma: tuple[float, float] = (0.1, 0.5)
    sia_kl_direction: KLDirection = "student_teacher"
    sia_include_cls: bool = False
    pic_projector_hidden: int | None = Field(default=None, ge=1)
    pic_progressive: bool = False
    pic_cross_view: bool = True
    mic_dims: list[int] | None = Field(default=None, description="SCR/SIR prefixes; None = dims.")
    sir_t: float = Field(default=2.0, gt=0)
    normalize_terms: bool = False
    ema_decay: float = Field(default=0.99, ge=0.0, lt=1.0)


#: The ``loss`` section: one objective's own fields, chosen by ``loss.objective``. A new objective adds its
#: section here and its class to ``mipic.training.objectives.OBJECTIVES``.
LossConfig = Annotated[
    NoObjective | DistillOnlySection | InfoNCESection | MRLSection | AdaptiveLayerSection | MIPICSection,
    Field(discriminator="objective"),
]
LOSS_SECTIONS: dict[str, type[ObjectiveSection]] = {
    cls.model_fields["objective"].default: cls for cls in get_args(get_args(LossConfig)[0])
}


def matryoshka_dims(loss: ObjectiveSection) -> list[int] | None:
    """The prefixes the objective trains (its ``dims``), None when it has none or leaves them to the default."""
    return loss.dims if isinstance(loss, MatryoshkaSection) else None


class DistillSection(_Section):
    """Self-distillation from a frozen copy of the base encoder (losses/distill.py), added to any objective."""

    weight: float = Field(default=0.0, ge=0, description="Weight of SelfDistillLoss in the total; 0 = off.")
    temperature: float = Field(default=0.05, gt=0)
    layers: list[int] | None = Field(default=None, description="Student layers; None = all.")
    dims: list[int] | None = Field(
        default=None, description="Prefixes per layer; None = the objective's dims (loss.dims), else the default."
    )
    anchor_weight: float = Field(default=0.0, ge=0, description="Last layer, full width: 1 - cos to the teacher.")
    align_weight: float = Field(default=0.0, ge=0,
                                description="Every distilled (dim, layer): 1 - cos to the teacher's first dim "
                                "coordinates in the last layer's head coordinates (one space for every exit).")
    align_dim_weighting: AlignDimWeighting = Field(
        default="uniform",
        description="Weights of the align term's budgets: 'uniform', or 'linear' (∝ dim: wide prefixes weigh most).")
    cache_teacher: bool = Field(
        default=True,
        description="Run the frozen teacher once per distinct training text and keep its vector "
        "(training/teacher.py): a sentence paired with itself and every epoch after the first skip the teacher's "
        "forward. Same targets up to float rounding. Saved as output_dir/teacher_table.pt under a fingerprint, so a "
        "resumed run reads it back. false = the teacher runs on every row of every step.")


# The flat ``loss:`` section of configs before issue 21 (``objective`` at the top level; every objective's
# fields, and the self-distillation's, in one section). Checkpoints carry such a train_config.yaml.
_FLAT_DISTILL_KEYS = {"distill_weight": "weight", "distill_temperature": "temperature", "distill_layers": "layers",
                      "distill_dims": "dims", "anchor_weight": "anchor_weight", "align_weight": "align_weight",
                      "align_dim_weighting": "align_dim_weighting"}
_FLAT_LOSS_KEYS = frozenset({
    "dims", "weights", "temperature", "symmetric", "layers", "layer_weighting", "kl_weight", "kl_temperature",
    "chain", "sia_layers", "alpha", "w_sia", "w_pic", "w_scr", "w_sir", "sia_dims", "sia_attn_weight",
    "sia_cka_weight", "sia_attn_temperature", "sia_k_min", "sia_gamma", "sia_kl_direction", "sia_include_cls",
    "pic_projector_hidden", "pic_progressive", "pic_cross_view", "mic_dims", "sir_t", "normalize_terms",
    "ema_decay", *_FLAT_DISTILL_KEYS,
})


def migrate_flat_loss(data: Mapping[str, Any]) -> dict[str, Any]:
    """A config in the shape before issue 21 → the current one; a current config is returned as it is.

    The old shape is a top-level ``objective`` (also what ``--set objective=mrl`` writes) or a ``loss`` section
    without ``objective``. Then: ``loss.objective`` is that objective (default ``mipic``); the ``loss`` keys it
    reads stay, the other flat keys are dropped (the flat section carried every objective's fields, and only the
    chosen one's were read); ``distill_*``, ``anchor_weight``, ``align_*`` move to ``distill``; and an objective
    without ``dims`` hands ``loss.dims`` to ``distill.dims`` (the flat ``distill_dims`` fell back to it). Unknown
    keys stay in ``loss``, so validation names them.
    """
    loss = data.get("loss")
    if "objective" not in data and (not isinstance(loss, dict) or "objective" in loss):
        return dict(data)
    out = dict(data)
    flat = dict(out.pop("loss", None) or {})
    name = out.pop("objective", flat.get("objective", "mipic"))
    flat.pop("objective", None)
    section = LOSS_SECTIONS.get(name) if isinstance(name, str) else None
    reads = set(section.model_fields) if section is not None else set(flat)
    distill = dict(out.get("distill") or {})
    new_loss: dict[str, Any] = {"objective": name}
    for key, value in flat.items():
        if key in _FLAT_DISTILL_KEYS:
            distill[_FLAT_DISTILL_KEYS[key]] = value
        elif key in reads or key not in _FLAT_LOSS_KEYS:
            new_loss[key] = value
    if "dims" not in reads and flat.get("dims") is not None and distill.get("dims") is None:
        distill["dims"] = flat["dims"]
    out["loss"] = new_loss
    if distill:
        out["distill"] = distill
    return out


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
    model: ModelSection = Field(default_factory=ModelSection)
    loss: LossConfig = Field(default_factory=MIPICSection)
    distill: DistillSection = Field(default_factory=DistillSection)
    data: DataSection = Field(default_factory=DataSection)
    train: TrainSection = Field(default_factory=TrainSection)
    export: ExportSection = Field(default_factory=ExportSection)

    @model_validator(mode="before")
    @classmethod
    def _flat_loss(cls, data: object) -> object:
        return migrate_flat_loss(data) if isinstance(data, Mapping) else data

    @field_validator("export", mode="before")
    @classmethod
    def _export_shorthand(cls, value: object) -> object:
        # ``export: true`` in YAML is the common case; the section form sets name/version/dims too.
        return {"enabled": value} if isinstance(value, bool) else value

    @model_validator(mode="after")
    def _distill_alone_needs_distill(self) -> TrainConfig:
        if isinstance(self.loss, DistillOnlySection) and self.distill.weight <= 0:
            raise ValueError("objective 'distill' needs distill.weight > 0")
        return self

    @property
    def objective(self) -> str:
        """The objective's name (``loss.objective``): what logs, the manifest's source and the recipe call it."""
        return self.loss.objective

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
    data = apply_overrides(data, overrides)
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{error_path(err['loc'], data)}: {err['msg']}" for err in exc.errors())
        raise ValueError(f"invalid {kind} config ({origin}): {problems}") from exc


def error_path(loc: Sequence[int | str], data: object) -> str:
    """A validation error's location as the key path the user wrote: a tagged union puts its tag into the location
    (``loss.mipic.alpah``), a part that is no key of the input while the next part is one."""
    parts: list[str] = []
    node = data
    for i, part in enumerate(loc):
        nxt = loc[i + 1] if i + 1 < len(loc) else None
        if isinstance(node, Mapping) and part not in node and nxt is not None and nxt in node:
            continue  # the union's tag
        parts.append(str(part))
        node = node.get(part) if isinstance(node, Mapping) else None
    return ".".join(parts) or "<root>"


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
