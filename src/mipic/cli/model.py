"""Commands that make a model directory: ``bootstrap``, ``export``, ``heads fit``, ``heads save-default`` and
``calibrate``. Their sequences live in :mod:`mipic.training.release`, imported when a command runs (torch)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from mipic.cli.base import (
    BUILTIN_MIN_ITEMS,
    UserError,
    check_builtin_items,
    check_checkpoint,
    check_output,
    one_line,
    parse_ints,
    start,
)
from mipic.modeldir.manifest import load_manifest
from mipic.training import default_model
from mipic.training.heads_config import HeadFitConfig

_HEADS = HeadFitConfig()  # the head-fitting defaults, spelled once there


class BootstrapPrecision(str, Enum):
    fp32 = "fp32"
    int8 = "int8"


DEFAULT_CPU_PRECISION = BootstrapPrecision(default_model.DEFAULT_CPU_PRECISION)


def bootstrap(
    out: Annotated[Path, typer.Option(help="Where to write the exported default model.")] = Path(
        "models/all-minilm-l6-v2/1"
    ),
    heads: Annotated[
        bool, typer.Option(help="Attach the committed exit heads (--no-heads: plain truncation, the untouched model).")
    ] = True,
    precision: Annotated[
        BootstrapPrecision,
        typer.Option(help="fp32, or int8 (static, calibrated on training-split texts): faster on CPU, vectors "
                     "~0.998 cosine to fp32. The default is the measured CPU default (bench/results/precision.md)."),
    ] = DEFAULT_CPU_PRECISION,
) -> None:
    """Export the packaged all-MiniLM-L6-v2 to the staged ONNX format (needs the training extras).

    The parent directory becomes a model repository: if it has no CURRENT pointer yet, this version
    is promoted."""
    check_output(out)
    missing = default_model.missing_export_modules()
    if missing:
        raise UserError(f"bootstrap needs the training extra ({missing[0]} is not installed): "
                        "pip install 'mipic[train]'")
    from mipic.training import release

    start(offline=True)
    manifest = release.bootstrap_release(out, heads=heads, precision=precision.value)
    worst = max(manifest.parity.values())
    typer.echo(f"exported {manifest.model_id} to {out} (max parity error {worst:.2e}"
               f"{', with exit heads' if manifest.heads else ''})")


class HeadMethod(str, Enum):
    distill = "distill"
    pca = "pca"
    lstsq = "lstsq"


class LastLayerHead(str, Enum):
    pca = "pca"
    orthogonal = "orthogonal"
    affine = "affine"
    identity = "identity"


MethodOption = Annotated[HeadMethod, typer.Option(
    help="distill (KL to the teacher, + align) | pca (closed-form rotation) | lstsq (closed-form map onto the "
         "last layer).")]


def heads_fit(
    model: Annotated[Path, typer.Argument(exists=True, file_okay=False,
                                          help="An exported model directory (has manifest.json).")],
    out: Annotated[Path, typer.Option("--out", help="Where the model with heads is written (may equal MODEL).")],
    method: MethodOption = HeadMethod(_HEADS.method),
    sentences: Annotated[int, typer.Option(min=16, help="Training-split sentences to fit on.")] = _HEADS.sentences,
    passages: Annotated[
        int, typer.Option(min=0, help="Training-split passages (lead of news/BBC bodies) added to the sentences.")
    ] = _HEADS.passages,
    steps: Annotated[int, typer.Option(min=0, help="Adam steps (distill).")] = _HEADS.steps,
    batch_size: Annotated[
        int, typer.Option(min=4, help="Texts per step: the in-batch similarity set.")
    ] = _HEADS.batch_size,
    lr: Annotated[float, typer.Option(help="Adam learning rate (cosine decay).")] = _HEADS.lr,
    temperature: Annotated[
        float, typer.Option(help="Softmax temperature of the similarity distributions.")
    ] = _HEADS.temperature,
    teacher_layer: Annotated[int | None, typer.Option(help="Teacher layer (default: the last).")] = None,
    teacher_dim: Annotated[int | None, typer.Option(help="Teacher width (default: full).")] = None,
    last_layer: Annotated[
        LastLayerHead,
        typer.Option(help="The last layer's head: pca or orthogonal keep the full budget's similarities exactly."),
    ] = LastLayerHead(_HEADS.last_layer),
    align_weight: Annotated[
        float, typer.Option(min=0.0, help="distill: weight of the term that keeps every exit in the last layer's "
                            "space (a query at any exit can search a last-layer index); 0 = exits unrelated.")
    ] = _HEADS.align_weight,
    ridge: Annotated[
        float, typer.Option(min=0.0, help="lstsq (and distill's start): ridge λ, relative.")
    ] = _HEADS.ridge,
    seed: Annotated[int, typer.Option(help="Seed of the text sample and the batches.")] = _HEADS.seed,
    max_length: Annotated[int, typer.Option(min=2, help="Max tokens per fitting text.")] = _HEADS.max_length,
    version: Annotated[str | None, typer.Option(help="Version of the written model (default: MODEL's).")] = None,
    budgets: Annotated[bool, typer.Option(help="Measure quality and cost per budget into the manifest.")] = True,
    eval_items: Annotated[
        int, typer.Option(min=BUILTIN_MIN_ITEMS, help="Items per built-in suite for the budget table.")
    ] = 300,
) -> None:
    """Fit exit heads (one affine map per exit layer) on the training split and write MODEL + heads to OUT."""
    check_output(out)
    try:
        cfg = HeadFitConfig(method=method.value, sentences=sentences, passages=passages, steps=steps,
                            batch_size=batch_size, lr=lr, temperature=temperature, teacher_layer=teacher_layer,
                            teacher_dim=teacher_dim, last_layer=last_layer.value, max_length=max_length, seed=seed,
                            align_weight=align_weight, ridge=ridge)
    except ValueError as exc:
        raise UserError(one_line(exc)) from None
    from mipic.training import release

    start(offline=True)
    manifest, seconds = release.fit_and_attach_heads(model, out, cfg, version=version,
                                                     budget_items=eval_items if budgets else None)
    took = ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items())
    typer.echo(f"fitted {method.value} heads for {manifest.model_id} ({took}); wrote {out}")


def heads_save_default(
    model: Annotated[Path, typer.Argument(exists=True, file_okay=False,
                                          help="A default-model directory with fitted heads and a budget table.")],
    adapter: Annotated[
        Path | None,
        typer.Option(exists=True, file_okay=False,
                     help="The LoRA adapter MODEL's encoder was trained with (a run's final/adapter): ship it too."),
    ] = None,
    reproduce: Annotated[str, typer.Option(help="The script that rebuilds these assets.")] = (
        "scripts/fit_default_heads.sh"),
) -> None:
    """Maintainers: store MODEL's heads, budget quality and calibration (and its LoRA adapter) as the package
    assets `mipic bootstrap` builds the default model from."""
    start()
    manifest = load_manifest(model)
    if manifest.heads is None or manifest.budgets is None:
        raise UserError(f"{model} has no exit heads or no budget table: run `mipic heads fit` on it first")
    from mipic.training import release

    typer.echo(f"wrote {release.save_default_heads(model, adapter=adapter, reproduce=reproduce)} and its metadata")


def calibrate(
    model: Annotated[Path, typer.Argument(exists=True, file_okay=False,
                                          help="An exported model directory (has manifest.json).")],
    sentences: Annotated[int, typer.Option(min=16, help="Training-split sentences.")] = _HEADS.sentences,
    passages: Annotated[int, typer.Option(min=0, help="Training-split passages.")] = _HEADS.passages,
    max_length: Annotated[int, typer.Option(min=2, help="Max tokens per calibration text.")] = _HEADS.max_length,
    seed: Annotated[int, typer.Option(help="Seed of the text sample.")] = _HEADS.seed,
) -> None:
    """Measure MODEL's int8/uint8 ranges per (layer, dim) on the head-fitting texts and store them in its manifest
    (export and `heads fit` already do; for a model exported before, ~1 min for MiniLM)."""
    from mipic.training import release

    start(offline=True)
    cfg = HeadFitConfig(sentences=sentences, passages=passages, max_length=max_length, seed=seed)
    manifest = release.calibrate(model, cfg)
    assert manifest.calibration is not None
    typer.echo(f"calibrated {manifest.model_id}: {len(manifest.calibration.ranges)} budgets on "
               f"{manifest.calibration.texts} texts")


class Quantize(str, Enum):
    int8 = "int8"
    fp16 = "fp16"


class ExportHeads(str, Enum):
    auto = "auto"
    checkpoint = "checkpoint"
    distill = "distill"
    pca = "pca"
    none = "none"


def export(
    checkpoint: Annotated[
        Path, typer.Argument(exists=True, file_okay=False, help="Hugging Face checkpoint directory.")
    ],
    out: Annotated[Path, typer.Argument(help="Output model directory.")],
    name: Annotated[str, typer.Option(help="Model name in the manifest.")] = "mipic-model",
    version: Annotated[str, typer.Option(help="Model version in the manifest.")] = "1",
    dims: Annotated[str | None, typer.Option(help="Comma-separated allowed dims.")] = None,
    max_seq_length: Annotated[int | None, typer.Option(help="Max tokens per input.")] = None,
    quantize: Annotated[
        Quantize | None, typer.Option(help="Also write OUT-int8 (static int8, calibrated; CPU) or OUT-fp16 (for CUDA).")
    ] = None,
    heads: Annotated[
        ExportHeads,
        typer.Option(help="Exit heads: the checkpoint's own (trained with it), distill (~2 min fit on the "
                     "exported graphs), pca, none; auto = checkpoint if it has heads.npz, else distill."),
    ] = ExportHeads.auto,
    budget_items: Annotated[
        int, typer.Option(min=0, help="Items per built-in suite for the manifest's budget table (0: skip; else >= 30).")
    ] = 300,
) -> None:
    """Export a checkpoint to the staged ONNX format (refused if parity with PyTorch fails), fit exit heads,
    and record quality and cost per budget in the manifest."""
    dim_list = parse_ints(dims, "--dims")
    if budget_items:
        check_builtin_items(budget_items, "--budget-items")
    check_checkpoint(checkpoint)
    check_output(out)
    from mipic.training import precision, release

    start(offline=True)
    options = release.export_options_for(checkpoint, name=name, version=version, dims=dim_list,
                                         max_seq_length=max_seq_length)
    manifest = release.export_with_heads(checkpoint, out, options, release.heads_choice(checkpoint, heads.value),
                                         budget_items=budget_items or None)
    typer.echo(f"exported {manifest.model_id} to {out}")
    if quantize is not None:
        low_dir = out.with_name(f"{out.name}-{quantize.value}")
        low = precision.convert_precision(out, low_dir, quantize.value)
        worst = min(low.parity.values(), default=float("nan"))
        typer.echo(f"wrote {quantize.value} copy to {low_dir} (worst cosine vs fp32 over all budgets: {worst:.4f})")
