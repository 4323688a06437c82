"""Commands that measure a model: ``eval`` (every (layer, dim) budget, per read-out) and ``geometry``
(uniformity, alignment, spectrum). What the model directory can tell is checked before minutes of encoding;
the evaluation package (torch) is imported when a command runs."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer

from mipic.cli.base import UserError, check_builtin_items, check_checkpoint, check_output, one_line, parse_ints, start
from mipic.modeldir.manifest import load_manifest

READ_OUTS = ("plain", "pca", "heads")


def eval_(
    model: Annotated[str, typer.Argument(help="HF checkpoint or staged ONNX model dir.")],
    out: Annotated[Path, typer.Option(help="Where grid.json, grid.md and heatmaps go.")] = Path("runs/eval"),
    pairs: Annotated[
        Path | None, typer.Option(exists=True, dir_okay=False, help="JSONL {text1, text2, score}.")
    ] = None,
    pair_labels: Annotated[
        Path | None, typer.Option(exists=True, dir_okay=False, help="JSONL {text1, text2, label}.")
    ] = None,
    retrieval: Annotated[
        Path | None, typer.Option(exists=True, file_okay=False, help="Dir with queries/corpus/qrels JSONL.")
    ] = None,
    classification: Annotated[
        Path | None, typer.Option(exists=True, dir_okay=False, help="JSONL {text, label}.")
    ] = None,
    builtin: Annotated[bool, typer.Option(help="Add the built-in suites from the packaged corpora.")] = False,
    layers: Annotated[str | None, typer.Option(help="Comma-separated layers (default all).")] = None,
    dims: Annotated[str | None, typer.Option(help="Comma-separated dims (default the model's).")] = None,
    max_items: Annotated[
        int, typer.Option(min=2, help="Items per suite (seeded sample); at least 30 with --builtin.")
    ] = 300,
    max_length: Annotated[int, typer.Option(min=2, help="Max tokens per text (the model's limit caps it).")] = 128,
    variants: Annotated[
        str | None,
        typer.Option(help="Read-outs to compare: plain,pca,heads (default: all the model allows)."),
    ] = None,
    fit_sentences: Annotated[
        int, typer.Option(min=16, help="Training-split sentences the pca read-out is fitted on.")
    ] = 4000,
) -> None:
    """Score every (layer, dim) budget for plain truncation, a PCA rotation and the model's exit heads:
    compare.md, grid.json/.md (the served read-out), heatmap PNGs."""
    layer_list, dim_list = parse_ints(layers, "--layers"), parse_ints(dims, "--dims")
    if builtin:
        check_builtin_items(max_items, "--max-items")
    names = [v.strip() for v in variants.split(",") if v.strip()] if variants else None
    unknown = [v for v in names or [] if v not in READ_OUTS]
    if unknown:
        raise typer.BadParameter(f"unknown read-out {unknown[0]!r}; choose from {', '.join(READ_OUTS)}",
                                 param_hint="--variants")
    if not Path(model).is_dir():
        raise UserError(f"model {model} is not a directory (give a checkpoint or an exported model directory)")
    if not (pairs or pair_labels or retrieval or classification or builtin):
        raise UserError("nothing to evaluate: give --pairs, --pair-labels, --retrieval, --classification or --builtin")
    _check_eval_model(Path(model), layer_list, dim_list, names)
    check_output(out)
    from mipic.training.evaluation.command import eval_command

    start(offline=True)
    result = eval_command(
        model,
        out,
        pairs=pairs,
        pair_labels=pair_labels,
        retrieval=retrieval,
        classification=classification,
        builtin=builtin,
        layers=layer_list,
        dims=dim_list,
        max_items=max_items,
        max_length=max_length,
        variants=names,
        fit_sentences=fit_sentences,
    )
    typer.echo(f"scored {len(result.layers)} layers x {len(result.dims)} dims; wrote {out}/compare.md, {out}/grid.md")


def _check_eval_model(model: Path, layers: list[int] | None, dims: list[int] | None, names: list[str] | None) -> None:
    """What can be checked from the model directory's metadata, before minutes of encoding."""
    if (model / "manifest.json").is_file():
        m = load_manifest(model, verify=False)
        num_layers, hidden, has_heads = m.num_layers, m.hidden_size, m.heads is not None
    else:
        check_checkpoint(model)
        try:
            hf = json.loads((model / "config.json").read_text())
            num_layers, hidden = int(hf["num_hidden_layers"]), int(hf["hidden_size"])
        except (OSError, ValueError, KeyError, TypeError):
            raise UserError(f"{model}/config.json has no num_hidden_layers / hidden_size") from None
        has_heads = False
    bad = [ly for ly in layers or [] if not 1 <= ly <= num_layers]
    if bad:
        raise typer.BadParameter(f"layer {bad[0]} is not within 1..{num_layers}", param_hint="--layers")
    bad = [d for d in dims or [] if not 1 <= d <= hidden]
    if bad:
        raise typer.BadParameter(f"dim {bad[0]} is not within 1..{hidden}", param_hint="--dims")
    if names and "heads" in names and not has_heads:
        raise typer.BadParameter("read-out 'heads' needs an exported model directory with exit heads",
                                 param_hint="--variants")


def geometry(
    models: Annotated[
        list[str], typer.Argument(help="HF checkpoint dirs (e.g. runs/jepa/final), or 'packaged' for the base.")
    ],
    out: Annotated[Path, typer.Option(help="Where geometry.json, geometry.md and spectrum.png go.")] = Path(
        "runs/geometry"
    ),
    names: Annotated[str | None, typer.Option(help="Comma-separated row names (default from the paths).")] = None,
    layer: Annotated[int | None, typer.Option(help="Layer to pool (default the last).")] = None,
    window: Annotated[int, typer.Option(min=1, help="Layers averaged by the last_layers_avg pooling.")] = 2,
    max_items: Annotated[int, typer.Option(min=2, help="Items per built-in suite the sample is drawn from.")] = 300,
    max_texts: Annotated[int, typer.Option(min=2, help="Texts in the uniformity / spectrum sample.")] = 1000,
) -> None:
    """Uniformity, alignment, spectrum and effective rank per dim under CLS / mean / max / last-layers pooling."""
    missing = [m for m in models if m != "packaged" and not Path(m).is_dir()]
    if missing:
        raise UserError(f"model {missing[0]} is not a directory (give checkpoint directories or 'packaged')")
    check_output(out)
    from mipic.training.evaluation.spectrum import geometry_command

    start(offline=True)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        reports = geometry_command(
            models,
            out,
            names=[n.strip() for n in names.split(",")] if names else None,
            layer=layer,
            window=window,
            max_items=max_items,
            max_texts=max_texts,
        )
    except ValueError as exc:  # names that do not match the models, a layer the model lacks
        raise UserError(one_line(exc)) from None
    for r in reports:
        cells = ", ".join(f"{v} {g.uniformity:.4f}" for v, g in r.poolings.items())
        typer.echo(f"{r.name}: uniformity {cells}")
    typer.echo(f"wrote {out}/geometry.md, geometry.json, spectrum.png")
