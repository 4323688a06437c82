"""Model directory contract shared by training (writer) and serving (reader).

A model directory holds a staged ONNX export: one graph for the embedding block and one graph per
encoder layer, each owning its own weights (so weights are stored once), plus the tokenizer and a
``manifest.json`` described by :class:`Manifest`. Every file except the manifest is listed with its
SHA-256 so a server can refuse a corrupted or half-copied version.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

MANIFEST_FILE = "manifest.json"
GOLDEN_FILE = "golden.json"
SCHEMA_VERSION = 1
#: A model's exits share one space when every budget's mean cosine to (dim, last layer) is at least this.
#: Plain truncation of MiniLM's layers scores 0.23–0.51 and independently rotated heads about 0; heads aligned
#: to the last layer (``mipic heads fit``, issue 18) 0.68 and more (README, "One index, any exit").
SHARED_SPACE_MIN_COSINE = 0.5
#: The Matryoshka prefixes a model serves unless its export says otherwise (plus the full width).
DEFAULT_DIMS = (16, 32, 64, 128, 256)


def default_dims(hidden_size: int) -> list[int]:
    """The default prefixes below ``hidden_size`` plus the full width: what export serves, training trains and
    evaluation measures when no dims are given."""
    return sorted({d for d in DEFAULT_DIMS if d < hidden_size} | {hidden_size})


class ManifestError(ValueError):
    """The directory is not a valid model: missing files, bad checksums or an invalid manifest."""


class Budget(BaseModel):
    """One (dim, layer) operating point."""

    model_config = ConfigDict(frozen=True)

    dim: int = Field(gt=0)
    layer: int = Field(gt=0)


class StageSpec(BaseModel):
    """One ONNX graph of the staged model.

    ``kind == "embeddings"``: inputs ``input_ids`` (B, T) int64 → output ``hidden_states`` (B, T, H).
    ``kind == "layer"``: inputs ``hidden_states`` (B, T, H) float and ``attention_mask`` (B, T) int64 →
    output ``layer_output`` (B, T, H), the state after encoder layer ``index``.
    """

    model_config = ConfigDict(frozen=True)

    kind: Literal["embeddings", "layer"]
    index: int = Field(ge=0, description="0 for embeddings, 1..L for encoder layers")
    path: str


class HeadsSpec(BaseModel):
    """Exit heads carried by the model (see ``heads.py`` for the file format).

    ``method`` says how they were fitted (``distill``: KL self-distillation to a teacher; ``pca``: the
    closed-form rotation; ``trained``: jointly with the encoder), ``recipe`` every option of the fit,
    ``data`` where the fitting sentences came from (always the training split), ``fitted_budgets`` the
    (dim, layer) budgets the objective covered.
    """

    model_config = ConfigDict(frozen=True)

    path: str = "heads.npz"
    method: str = Field(min_length=1)
    recipe: dict[str, str | int | float | bool] = Field(default_factory=dict)
    data: dict[str, str | int] = Field(default_factory=dict)
    fitted_budgets: list[Budget] = Field(default_factory=list)


class BudgetRow(BaseModel):
    """Quality and cost of one (dim, layer) budget, measured at export."""

    model_config = ConfigDict(frozen=True)

    dim: int = Field(gt=0)
    layer: int = Field(gt=0)
    relative_cost: float = Field(gt=0, le=1, description="compute relative to the full budget (1.0)")
    quality: float = Field(description="mean of the suites' main metrics")
    scores: dict[str, float] = Field(default_factory=dict, description="suite → main metric")
    pareto: bool = Field(False, description="no other budget is at least as good for at most the cost")
    index_quality: float | None = Field(
        None, description="mean over the retrieval suites of their main metric with queries at this budget and "
        "documents at (dim, last layer): how well it searches an index built at full depth")
    index_scores: dict[str, float] = Field(default_factory=dict, description="retrieval suite → index metric")
    cosine_to_last: float | None = Field(
        None, description="mean cosine between a text's vector at this budget and at (dim, last layer)")


class ExitSpace(BaseModel):
    """Whether the model's exits share one embedding space (issue 18): a query embedded at any (dim, layer)
    can search an index built at (dim, last layer). Measured at export from the budget table:
    ``shared`` is true when every budget's ``cosine_to_last`` is at least ``min_cosine_required`` (the
    criterion ``modeldir.budgets.exit_space`` applies); ``worst_cosine`` / ``worst_budget`` say where it is
    weakest."""

    model_config = ConfigDict(frozen=True)

    shared: bool
    worst_cosine: float
    worst_budget: Budget
    min_cosine_required: float = Field(gt=0, le=1)


class BudgetTable(BaseModel):
    """What each budget buys: quality on the built-in suites and relative compute, with the Pareto set.

    ``stage_ms`` is the measured time of the embeddings stage and each layer on ``timing_batch`` (on
    ``timing_machine``); ``relative_cost`` of a budget at layer l is (embeddings + layers 1..l + head
    rows for its dim) over the full budget's.
    """

    model_config = ConfigDict(frozen=True)

    suites: dict[str, str] = Field(default_factory=dict, description="suite → its main metric")
    rows: list[BudgetRow] = Field(default_factory=list)
    stage_ms: list[float] = Field(default_factory=list)
    head_ms: float = 0.0
    timing_batch: str = ""
    timing_machine: str = ""
    eval_items: int = 0
    index_suites: dict[str, str] = Field(
        default_factory=dict, description="retrieval suite → its main metric, scored against a last-layer index")
    exit_space: ExitSpace | None = Field(
        None, description="do the exits share one space (from the rows' cosine_to_last); None = not measured")


class CalibrationRange(BaseModel):
    """The int8/uint8 range of one (layer, dim)'s served vectors: every value maps into [low, high]."""

    model_config = ConfigDict(frozen=True)

    low: float
    high: float


class Calibration(BaseModel):
    """Ranges that map the served unit vectors to int8/uint8 (``vector.quantize``), fixed at export.

    ``ranges`` maps the budget key ``d{dim}_l{layer}`` of every served (layer, dim) to (−m, m), m = the
    largest |value| of that budget's served vectors (pool → head → truncate → normalise) over the ``texts``
    calibration texts described by ``data`` (the training-split fitting sentences and passages, never an
    eval-split text): ``method = "maxabs"`` (``vector.calibration_range``).
    """

    model_config = ConfigDict(frozen=True)

    method: Literal["maxabs"] = "maxabs"
    texts: int = Field(gt=1)
    max_length: int = Field(gt=1, description="tokens per calibration text")
    data: dict[str, str | int] = Field(default_factory=dict)
    ranges: dict[str, CalibrationRange]


class Manifest(BaseModel):
    """What a server needs to know about a model directory, and what training promises."""

    model_config = ConfigDict(frozen=True)

    schema_version: int = SCHEMA_VERSION
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9._-]+$")
    version: str = Field(min_length=1, pattern=r"^[A-Za-z0-9._-]+$")
    architecture: str = "bert"
    hidden_size: int = Field(gt=0)
    num_layers: int = Field(gt=0)
    max_seq_length: int = Field(gt=1)
    pooling: Literal["mean", "cls"] = "mean"
    precision: Literal["fp32", "fp16", "int8"] = "fp32"
    dims: list[int] = Field(description="Allowed output dims (Matryoshka prefixes), ascending")
    trained_budgets: list[Budget] = Field(default_factory=list)
    tokenizer: str = "tokenizer.json"
    stages: list[StageSpec]
    files: dict[str, str] = Field(default_factory=dict, description="relative path → sha256")
    source: dict[str, str] = Field(default_factory=dict, description="base model, training run, ...")
    parity: dict[str, float] = Field(
        default_factory=dict, description="max |onnx - torch| of hidden states per layer at export"
    )
    eval: dict[str, dict[str, float]] = Field(
        default_factory=dict, description="budget key 'd{dim}_l{layer}' → metric → value"
    )
    heads: HeadsSpec | None = Field(None, description="exit heads, if the model carries them")
    budgets: BudgetTable | None = Field(None, description="quality and cost per budget, measured at export")
    calibration: Calibration | None = Field(
        None, description="int8/uint8 ranges per (layer, dim), from the fitting texts at export"
    )
    golden_min_cosine: float = Field(
        0.9999, gt=0, le=1, description="a server refuses the version if golden.json is matched worse"
    )
    created_at: str = ""

    @model_validator(mode="after")
    def _check(self) -> Manifest:
        if self.schema_version != SCHEMA_VERSION:
            raise ValueError(f"unsupported manifest schema_version {self.schema_version}")
        if not self.dims or sorted(set(self.dims)) != self.dims:
            raise ValueError("dims must be a non-empty ascending list without repeats")
        if self.dims[-1] != self.hidden_size:
            raise ValueError("the largest allowed dim must equal hidden_size")
        kinds = [(s.kind, s.index) for s in self.stages]
        expected = [("embeddings", 0)] + [("layer", i) for i in range(1, self.num_layers + 1)]
        if kinds != expected:
            raise ValueError("stages must be the embeddings stage then layers 1..num_layers in order")
        for b in self.trained_budgets:
            if b.dim not in self.dims or b.layer > self.num_layers:
                raise ValueError(f"trained budget {b} is outside dims/layers")
        if self.heads is not None:
            for b in self.heads.fitted_budgets:
                if b.dim > self.hidden_size or b.layer > self.num_layers:
                    raise ValueError(f"heads fitted budget {b} is outside the model")
        if self.calibration is not None:
            self._check_calibration(self.calibration)
        return self

    def _check_calibration(self, cal: Calibration) -> None:
        expected = {budget_key(d, ly) for ly in self.layers for d in self.dims}
        if set(cal.ranges) != expected:
            missing = sorted(expected - set(cal.ranges))[:3]
            extra = sorted(set(cal.ranges) - expected)[:3]
            raise ValueError(f"calibration must cover every (layer, dim) exactly; missing {missing}, extra {extra}")
        for key, r in cal.ranges.items():
            if not (math.isfinite(r.low) and math.isfinite(r.high) and r.low < r.high):
                raise ValueError(f"calibration {key}: low and high must be finite with low < high")

    @property
    def layers(self) -> list[int]:
        return list(range(1, self.num_layers + 1))

    @property
    def model_id(self) -> str:
        return f"{self.name}@{self.version}"


def budget_key(dim: int, layer: int) -> str:
    return f"d{dim}_l{layer}"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def checksum_dir(model_dir: Path) -> dict[str, str]:
    """SHA-256 of every regular file below ``model_dir`` except the manifest itself."""
    return {
        p.relative_to(model_dir).as_posix(): sha256_file(p)
        for p in sorted(model_dir.rglob("*"))
        if p.is_file() and p.name != MANIFEST_FILE
    }


def write_manifest(model_dir: Path, manifest: Manifest) -> Manifest:
    """Fill in the checksums of every file and write ``manifest.json`` atomically."""
    final = manifest.model_copy(update={"files": checksum_dir(model_dir)})
    tmp = model_dir / (MANIFEST_FILE + ".tmp")
    tmp.write_text(json.dumps(final.model_dump(mode="json"), indent=2) + "\n")
    tmp.replace(model_dir / MANIFEST_FILE)
    return final


def load_manifest(model_dir: Path, verify: bool = True) -> Manifest:
    """Read and validate the manifest; with ``verify`` also check every listed file's checksum."""
    path = model_dir / MANIFEST_FILE
    if not path.is_file():
        raise ManifestError(f"no {MANIFEST_FILE} in {model_dir}")
    try:
        manifest = Manifest.model_validate_json(path.read_bytes())
    except ValidationError as exc:
        reasons = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'manifest'}: {e['msg']}" for e in exc.errors()[:5]
        )
        raise ManifestError(f"invalid {MANIFEST_FILE} in {model_dir}: {reasons}") from exc
    required = {s.path for s in manifest.stages} | {manifest.tokenizer}
    if manifest.heads is not None:
        required.add(manifest.heads.path)
    missing = sorted(required - set(manifest.files))
    if missing:
        raise ManifestError(f"manifest of {model_dir} lists no checksum for {missing}")
    if verify:
        for rel, expected in manifest.files.items():
            file = model_dir / rel
            if not file.is_file():
                raise ManifestError(f"{model_dir}: missing file {rel}")
            if sha256_file(file) != expected:
                raise ManifestError(f"{model_dir}: checksum mismatch for {rel}")
    return manifest
