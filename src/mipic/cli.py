"""``mipic``: one command-line entry point. Training imports are lazy so ``serve`` never loads torch."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated, Literal, TypeVar

import typer

from mipic.training.heads_config import HeadFitConfig

_HEADS = HeadFitConfig()  # the head-fitting defaults, spelled once there
app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
logger = logging.getLogger("mipic")


def _setup_logging(level: str = "info") -> None:
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )


def ensure_default_model(repo_dir: Path) -> None:
    """Export the packaged MiniLM as version 1 of the repository ``repo_dir`` and promote it, in a child
    process (the server must not import torch)."""
    from mipic.modeldir.repository import is_repository

    if is_repository(repo_dir):
        return
    logger.info("no model at %s: exporting the packaged all-MiniLM-L6-v2 (first run, ~20 s)", repo_dir)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "mipic.cli", "bootstrap", "--out", str(repo_dir / "1")]
    if subprocess.run(cmd, env=env, check=False).returncode != 0:
        raise typer.Exit(code=1)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (MIPIC_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (MIPIC_PORT).")] = None,
    model: Annotated[Path | None, typer.Option("--model", help="Model directory (MIPIC_MODEL_DIR).")] = None,
    provider: Annotated[str | None, typer.Option(help="auto | cpu | cuda (MIPIC_PROVIDER).")] = None,
    log_level: Annotated[str, typer.Option(help="Log level.")] = "info",
) -> None:
    """Serve a model directory over HTTP (default: the bootstrapped all-MiniLM-L6-v2)."""
    from mipic.service.app import create_app
    from mipic.service.server import run
    from mipic.service.settings import DEFAULT_MODEL_DIR, Settings

    _setup_logging(log_level)
    overrides: dict[str, object] = {}
    if host is not None:
        overrides["host"] = host
    if port is not None:
        overrides["port"] = port
    if model is not None:
        overrides["model_dir"] = model
    if provider is not None:
        overrides["provider"] = provider
    settings = Settings(**overrides)  # type: ignore[arg-type]
    if settings.model_dir == DEFAULT_MODEL_DIR and settings.bootstrap_default:
        ensure_default_model(settings.model_dir)
    run(create_app(settings), settings, log_level)


@app.command()
def bootstrap(
    out: Annotated[Path, typer.Option(help="Where to write the exported default model.")] = Path(
        "models/all-minilm-l6-v2/1"
    ),
    heads: Annotated[
        bool, typer.Option(help="Attach the committed exit heads (--no-heads: plain truncation, the untouched model).")
    ] = True,
) -> None:
    """Export the packaged all-MiniLM-L6-v2 to the staged ONNX format (needs the training extras).

    The parent directory becomes a model repository: if it has no CURRENT pointer yet, this version
    is promoted."""
    from mipic.modeldir.repository import ModelRepository, is_repository
    from mipic.training.release import bootstrap_default_model

    _setup_logging()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    manifest = bootstrap_default_model(out, heads=heads)
    if not is_repository(out.parent):
        ModelRepository(out.parent).promote(out.name)
    worst = max(manifest.parity.values())
    typer.echo(f"exported {manifest.model_id} to {out} (max parity error {worst:.2e}"
               f"{', with exit heads' if manifest.heads else ''})")


heads_app = typer.Typer(no_args_is_help=True, help="Exit heads: fit them on a model directory.")
app.add_typer(heads_app, name="heads")


class HeadMethod(str, Enum):
    distill = "distill"
    pca = "pca"


class ExportHeads(str, Enum):
    auto = "auto"
    checkpoint = "checkpoint"
    distill = "distill"
    pca = "pca"
    none = "none"


class LastLayerHead(str, Enum):
    pca = "pca"
    orthogonal = "orthogonal"
    affine = "affine"
    identity = "identity"


MethodOption = Annotated[HeadMethod, typer.Option(help="distill (KL to the teacher) | pca (closed-form rotation).")]


@heads_app.command("fit")
def heads_fit(
    model: Annotated[Path, typer.Argument(help="An exported model directory (has manifest.json).")],
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
    seed: Annotated[int, typer.Option(help="Seed of the text sample and the batches.")] = _HEADS.seed,
    max_length: Annotated[int, typer.Option(min=2, help="Max tokens per fitting text.")] = _HEADS.max_length,
    version: Annotated[str | None, typer.Option(help="Version of the written model (default: MODEL's).")] = None,
    budgets: Annotated[bool, typer.Option(help="Measure quality and cost per budget into the manifest.")] = True,
    eval_items: Annotated[int, typer.Option(min=2, help="Items per built-in suite for the budget table.")] = 300,
) -> None:
    """Fit exit heads (one affine map per exit layer) on the training split and write MODEL + heads to OUT."""
    from mipic.modeldir.runner import LoadedModel
    from mipic.training.data.paths import resolve_data_dir
    from mipic.training.export import attach_heads
    from mipic.training.heads import fit_heads
    from mipic.training.release import calibrate as calibrate_model
    from mipic.training.release import measure_budgets, write_budgets

    _setup_logging()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    cfg = HeadFitConfig(method=method.value, sentences=sentences, passages=passages, steps=steps,
                        batch_size=batch_size, lr=lr, temperature=temperature, teacher_layer=teacher_layer,
                        teacher_dim=teacher_dim, last_layer=last_layer.value, max_length=max_length, seed=seed)
    loaded = LoadedModel(model, provider="cpu", max_seq_length=max_length)
    result = fit_heads(loaded, cfg, cache_dir=resolve_data_dir() / "features")
    loaded.close()
    manifest = attach_heads(model, out, result.heads, result.spec, version=version)
    manifest = calibrate_model(out, cfg)  # same texts: the pooled states are cached, only the read-out runs
    if budgets:
        manifest = write_budgets(out, measure_budgets(out, max_items=eval_items, seed=seed))
    took = ", ".join(f"{k} {v:.0f} s" for k, v in result.seconds.items())
    typer.echo(f"fitted {method.value} heads for {manifest.model_id} ({took}); wrote {out}")


@heads_app.command("save-default")
def heads_save_default(
    model: Annotated[Path, typer.Argument(help="A default-model directory with fitted heads and a budget table.")],
) -> None:
    """Maintainers: store MODEL's heads and budget quality as the package assets `mipic bootstrap` attaches."""
    from mipic.training.release import save_default_heads

    _setup_logging()
    typer.echo(f"wrote {save_default_heads(model)} and its metadata")


@app.command()
def calibrate(
    model: Annotated[Path, typer.Argument(help="An exported model directory (has manifest.json).")],
    sentences: Annotated[int, typer.Option(min=16, help="Training-split sentences.")] = _HEADS.sentences,
    passages: Annotated[int, typer.Option(min=0, help="Training-split passages.")] = _HEADS.passages,
    max_length: Annotated[int, typer.Option(min=2, help="Max tokens per calibration text.")] = _HEADS.max_length,
    seed: Annotated[int, typer.Option(help="Seed of the text sample.")] = _HEADS.seed,
) -> None:
    """Measure MODEL's int8/uint8 ranges per (layer, dim) on the head-fitting texts and store them in its manifest
    (export and `heads fit` already do; for a model exported before, ~1 min for MiniLM)."""
    from mipic.training.release import calibrate as calibrate_model

    _setup_logging()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    cfg = HeadFitConfig(sentences=sentences, passages=passages, max_length=max_length, seed=seed)
    manifest = calibrate_model(model, cfg)
    assert manifest.calibration is not None
    typer.echo(f"calibrated {manifest.model_id}: {len(manifest.calibration.ranges)} budgets on "
               f"{manifest.calibration.texts} texts")


@app.command()
def export(
    checkpoint: Annotated[Path, typer.Argument(help="Hugging Face checkpoint directory.")],
    out: Annotated[Path, typer.Argument(help="Output model directory.")],
    name: Annotated[str, typer.Option(help="Model name in the manifest.")] = "mipic-model",
    version: Annotated[str, typer.Option(help="Model version in the manifest.")] = "1",
    dims: Annotated[str | None, typer.Option(help="Comma-separated allowed dims.")] = None,
    max_seq_length: Annotated[int | None, typer.Option(help="Max tokens per input.")] = None,
    quantize: Annotated[
        str | None, typer.Option(help="Also write OUT-int8 (dynamic int8, CPU) or OUT-fp16 (for CUDA).")
    ] = None,
    heads: Annotated[
        ExportHeads,
        typer.Option(help="Exit heads: the checkpoint's own (trained with it), distill (~2 min fit on the "
                     "exported graphs), pca, none; auto = checkpoint if it has heads.npz, else distill."),
    ] = ExportHeads.auto,
    budget_items: Annotated[
        int, typer.Option(min=0, help="Items per built-in suite for the manifest's budget table (0: skip).")
    ] = 300,
) -> None:
    """Export a checkpoint to the staged ONNX format (refused if parity with PyTorch fails), fit exit heads,
    and record quality and cost per budget in the manifest."""
    from mipic.training.export import convert_precision
    from mipic.training.release import export_options_for, export_with_heads

    _setup_logging()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    dim_list = [int(d) for d in dims.split(",")] if dims else None
    manifest = export_with_heads(
        checkpoint,
        out,
        export_options_for(checkpoint, name=name, version=version, dims=dim_list, max_seq_length=max_seq_length),
        _export_heads(checkpoint, heads),
        budget_items=budget_items or None,
    )
    typer.echo(f"exported {manifest.model_id} to {out}")
    if quantize:
        low_dir = out.with_name(f"{out.name}-{quantize}")
        low = convert_precision(out, low_dir, quantize)
        worst = min(low.parity.values(), default=float("nan"))
        typer.echo(f"wrote {quantize} copy to {low_dir} (worst cosine vs fp32 over all budgets: {worst:.4f})")


def _export_heads(checkpoint: Path, choice: ExportHeads) -> HeadFitConfig | Literal["checkpoint"] | None:
    if choice is ExportHeads.none:
        return None
    if choice is ExportHeads.checkpoint or (choice is ExportHeads.auto and (checkpoint / "heads.npz").is_file()):
        return "checkpoint"
    return HeadFitConfig(method="pca" if choice is ExportHeads.pca else "distill")


@app.command("eval")
def eval_(
    model: Annotated[str, typer.Argument(help="HF checkpoint or staged ONNX model dir.")],
    out: Annotated[Path, typer.Option(help="Where grid.json, grid.md and heatmaps go.")] = Path("runs/eval"),
    pairs: Annotated[Path | None, typer.Option(help="JSONL {text1, text2, score}.")] = None,
    pair_labels: Annotated[Path | None, typer.Option(help="JSONL {text1, text2, label}.")] = None,
    retrieval: Annotated[Path | None, typer.Option(help="Dir with queries/corpus/qrels JSONL.")] = None,
    classification: Annotated[Path | None, typer.Option(help="JSONL {text, label}.")] = None,
    builtin: Annotated[bool, typer.Option(help="Add the built-in suites from the packaged corpora.")] = False,
    layers: Annotated[str | None, typer.Option(help="Comma-separated layers (default all).")] = None,
    dims: Annotated[str | None, typer.Option(help="Comma-separated dims (default the model's).")] = None,
    max_items: Annotated[int, typer.Option(min=2, help="Items per suite (seeded sample).")] = 300,
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
    from mipic.training.evaluation.command import eval_command

    _setup_logging()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    result = eval_command(
        model,
        out,
        pairs=pairs,
        pair_labels=pair_labels,
        retrieval=retrieval,
        classification=classification,
        builtin=builtin,
        layers=[int(x) for x in layers.split(",")] if layers else None,
        dims=[int(x) for x in dims.split(",")] if dims else None,
        max_items=max_items,
        max_length=max_length,
        variants=[v.strip() for v in variants.split(",")] if variants else None,
        fit_sentences=fit_sentences,
    )
    typer.echo(f"scored {len(result.layers)} layers x {len(result.dims)} dims; wrote {out}/compare.md, {out}/grid.md")


RepoOption = Annotated[Path, typer.Option("--repo", help="Model repository: models/<name>.")]
DEFAULT_REPO = Path("models/all-minilm-l6-v2")


@app.command()
def register(
    source: Annotated[Path, typer.Argument(help="An exported model directory.")],
    repo: RepoOption = DEFAULT_REPO,
    version: Annotated[str | None, typer.Option(help="Version name (default: the manifest's).")] = None,
) -> None:
    """Copy an exported model into the repository as a new version (not served until promoted)."""
    from mipic.modeldir.repository import ModelRepository

    _setup_logging()
    typer.echo(f"registered version {ModelRepository(repo).register(source, version)} in {repo}")


@app.command()
def promote(
    version: Annotated[str, typer.Argument(help="Version to serve.")],
    repo: RepoOption = DEFAULT_REPO,
) -> None:
    """Verify a version (schema, checksums) and point CURRENT at it; servers watching the repo switch."""
    from mipic.modeldir.manifest import ManifestError
    from mipic.modeldir.repository import ModelRepository, RepositoryError

    _setup_logging()
    try:
        ModelRepository(repo).promote(version)
    except (ManifestError, RepositoryError) as exc:
        typer.echo(f"refused: {exc}", err=True)
        raise typer.Exit(code=1) from exc
    typer.echo(f"{repo}: now serving version {version}")


@app.command()
def rollback(repo: RepoOption = DEFAULT_REPO) -> None:
    """Point CURRENT back at the previously promoted version."""
    from mipic.modeldir.manifest import ManifestError
    from mipic.modeldir.repository import ModelRepository, RepositoryError

    _setup_logging()
    try:
        version = ModelRepository(repo).rollback()
    except (ManifestError, RepositoryError) as exc:
        typer.echo(f"refused: {exc}", err=True)
        raise typer.Exit(code=1) from exc
    typer.echo(f"{repo}: rolled back to version {version}")


@app.command()
def versions(repo: RepoOption = DEFAULT_REPO) -> None:
    """List the repository's versions; the served one is marked with *."""
    from mipic.modeldir.repository import ModelRepository

    r = ModelRepository(repo)
    current = r.current()
    for v in r.versions():
        typer.echo(f"{'*' if v == current else ' '} {v}")


InitOption = Annotated[
    Path | None, typer.Option(help="Start from these weights (an encoder dir or a checkpoint-N of an earlier run).")
]
OutputDirOption = Annotated[
    Path | None, typer.Option(help="Where checkpoints and final/ go (overrides train.output_dir).")
]
ResumeOption = Annotated[bool, typer.Option(help="Continue from the latest checkpoint-N in the output dir, if any.")]
LogLevelOption = Annotated[str, typer.Option(help="Log level.")]
ConfigT = TypeVar("ConfigT")


def _load_run_config(
    loader: Callable[[Path, list[str]], ConfigT],
    config: Path,
    set_: list[str] | None,
    init: Path | None,
    output_dir: Path | None,
    resume: bool,
    log_level: str,
) -> ConfigT:
    """Shared start of `train` and `pretrain`: logging, offline env, overrides, config validation (exit 2)."""
    _setup_logging(log_level)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # ``--set`` values first, then the dedicated flags, so the flags win over a --set of the same key.
    overrides = list(set_ or [])
    if init is not None:
        overrides.append(f"model.init={init}")
    if output_dir is not None:
        overrides.append(f"train.output_dir={output_dir}")
    if resume:
        overrides.append("train.resume=true")
    try:
        return loader(config, overrides)
    except (OSError, ValueError) as exc:
        typer.echo(f"bad config: {exc}", err=True)
        raise typer.Exit(code=2) from exc


@app.command()
def train(
    config: Annotated[Path, typer.Option("--config", help="YAML training config (see configs/).")],
    init: InitOption = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a config value, e.g. --set train.max_steps=50 (repeatable)."),
    ] = None,
    output_dir: OutputDirOption = None,
    resume: ResumeOption = False,
    log_level: LogLevelOption = "info",
) -> None:
    """Train an encoder (unsupervised SimCSE + MRL / 2D Matryoshka / MIPIC) and save it under final/."""
    from mipic.training.config import load_config
    from mipic.training.trainer import train as run_training

    cfg = _load_run_config(load_config, config, set_, init, output_dir, resume, log_level)
    result = run_training(cfg)
    typer.echo(f"trained {cfg.objective} for {result.global_step} steps; final encoder in {result.final_dir}")
    if result.onnx_dir is not None:
        typer.echo(f"exported model in {result.onnx_dir}")


@app.command()
def retrain(
    config: Annotated[Path, typer.Option(help="Retrain pipeline YAML (configs/retrain_minilm.yaml).")] = Path(
        "configs/retrain_minilm.yaml"
    ),
    run_id: Annotated[str | None, typer.Option(help="Resume this run (finished steps are skipped).")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override: key.sub=value")] = None,
) -> None:
    """Train → export → evaluate → quality gate → register → promote; a failure changes nothing served."""
    from mipic.training.pipeline import GateFailed, Pipeline, load_retrain_config

    _setup_logging()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    pipeline = Pipeline(load_retrain_config(config, set_ or []), run_id=run_id)
    typer.echo(f"retrain run {pipeline.run_id} in {pipeline.dir}")
    try:
        state = pipeline.run()
    except GateFailed as exc:
        typer.echo(f"quality gate failed, nothing promoted: {exc}", err=True)
        raise typer.Exit(code=2) from exc
    typer.echo(f"done: {', '.join(state.get('done', []))}; served version: {pipeline.repo.current()}")


@app.command()
def pretrain(
    config: Annotated[Path, typer.Option("--config", help="YAML pretraining config (configs/jepa_minilm.yaml).")],
    init: InitOption = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a config value, e.g. --set balance.mode=sigmoid (repeatable)."),
    ] = None,
    output_dir: OutputDirOption = None,
    resume: ResumeOption = False,
    log_level: LogLevelOption = "info",
) -> None:
    """Continued MLM or MLM + JEPA pretraining; final/ is an encoder for `mipic train --init`."""
    from mipic.training.pretrain import pretrain as run_pretraining
    from mipic.training.pretrain_config import load_pretrain_config

    cfg = _load_run_config(load_pretrain_config, config, set_, init, output_dir, resume, log_level)
    result = run_pretraining(cfg)
    typer.echo(f"pretrained {cfg.objective} for {result.global_step} steps; final encoder in {result.final_dir}")


@app.command()
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
    from mipic.training.evaluation.spectrum import geometry_command

    _setup_logging()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
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
    except ValueError as exc:
        typer.echo(f"refused: {exc}", err=True)
        raise typer.Exit(code=2) from exc
    for r in reports:
        cells = ", ".join(f"{v} {g.uniformity:.4f}" for v, g in r.poolings.items())
        typer.echo(f"{r.name}: uniformity {cells}")
    typer.echo(f"wrote {out}/geometry.md, geometry.json, spectrum.png")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
