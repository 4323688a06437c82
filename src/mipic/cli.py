"""``mipic``: one command-line entry point. Training imports are lazy so ``serve`` never loads torch.

A user error (a path that does not exist, a bad value, a config that does not validate, a version the
repository refuses) is one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import importlib.metadata
import os
import sys
from collections.abc import Callable, Sequence
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from typer.core import TyperGroup

from mipic.corpus import DEFAULT_BATCH_TOKENS, DEFAULT_WINDOW_ROWS
from mipic.logs import LogFormat, setup_logging
from mipic.modeldir.manifest import ManifestError
from mipic.modeldir.repository import RepositoryError
from mipic.service.settings import DEFAULT_MODEL_DIR, Settings
from mipic.training import default_model
from mipic.training.heads_config import HeadFitConfig

_HEADS = HeadFitConfig()  # the head-fitting defaults, spelled once there


class UserError(Exception):
    """Something the user asked for cannot be done as given: one line on stderr, exit 2."""


# Errors that are about the user's input, whichever command raises them.
USER_ERRORS: tuple[type[Exception], ...] = (UserError, ManifestError, RepositoryError)


def one_line(exc: BaseException | str) -> str:
    """An exception's message on one line (pydantic's validation errors as ``field: message; ...``)."""
    if isinstance(exc, str):
        return " ".join(exc.split())
    errors = getattr(exc, "errors", None)
    if callable(errors) and type(exc).__name__ == "ValidationError":
        items = [f"{'.'.join(str(p) for p in e.get('loc', ())) or 'value'}: {e.get('msg', '')}" for e in errors()]
        more = f" (and {len(items) - 5} more)" if len(items) > 5 else ""
        return "; ".join(items[:5]) + more
    return " ".join(str(exc).split()) or type(exc).__name__


class _OneLineErrors(TyperGroup):
    """The top-level group: turns click's usage errors and :data:`USER_ERRORS` into one line and exit 2."""

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        try:
            rv = super().main(args=args, prog_name=prog_name, complete_var=complete_var, standalone_mode=False,
                              **extra)
        except typer.TyperException as exc:  # bad values, missing arguments, paths that do not exist
            ctx = getattr(exc, "ctx", None)
            where = ctx.command_path if ctx is not None else "mipic"
            _fail(f"{where}: error: {one_line(exc.format_message())}", 2)
        except USER_ERRORS as exc:
            _fail(f"mipic: error: {one_line(exc)}", 2)
        except typer.Abort:
            _fail("mipic: aborted", 1)
        if not standalone_mode:
            return rv
        sys.exit(rv if isinstance(rv, int) else 0)


def _fail(line: str, code: int) -> None:
    typer.echo(line, err=True)
    sys.exit(code)


app = typer.Typer(cls=_OneLineErrors, add_completion=False, no_args_is_help=True, help=__doc__)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"mipic {importlib.metadata.version('mipic')}")
        raise typer.Exit()


@app.callback(help=__doc__)
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    pass


def _setup_logging(level: str = "info", fmt: LogFormat = "text") -> None:
    setup_logging(level.lower(), fmt)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------- checks


READ_OUTS = ("plain", "pca", "heads")
# The built-in suites sample this many items at least: with fewer (the CLI's seed 0) a BBC topic keeps a
# single example and the classification probe's stratified folds fail; 30 leaves every topic two.
BUILTIN_MIN_ITEMS = 30


def _builtin_items(items: int, option: str) -> None:
    if items < BUILTIN_MIN_ITEMS:
        raise typer.BadParameter(f"{items} is below the built-in suites' minimum of {BUILTIN_MIN_ITEMS} items",
                                 param_hint=option)


def _ints(text: str | None, option: str) -> list[int] | None:
    """``"16,32"`` → [16, 32]; a bad item is a usage error naming the option."""
    if text is None:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a comma-separated list of integers", param_hint=option) from None


def _output_path(path: Path, what: str = "output") -> None:
    """``path`` must be a directory or creatable as one."""
    if path.exists() and not path.is_dir():
        raise UserError(f"{what} {path} exists and is not a directory")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UserError(f"cannot create {what} {path}: {parent} is not a directory")
            break


def _existing_repo(repo: Path) -> Path:
    if not repo.exists():
        raise UserError(f"no model repository at {repo} (no such directory)")
    if not repo.is_dir():
        raise UserError(f"{repo} is not a directory, so not a model repository")
    return repo


def _servable(path: Path) -> None:
    """What ``serve`` would load: a model directory, or a repository whose CURRENT can be followed."""
    from mipic.modeldir.manifest import load_manifest
    from mipic.modeldir.repository import resolve_model_dir

    if not path.exists():
        raise UserError(f"model directory {path} does not exist")
    if not path.is_dir():
        raise UserError(f"model directory {path} is not a directory")
    version_dir, _ = resolve_model_dir(path)
    load_manifest(version_dir, verify=False)


def _checkpoint(path: Path) -> None:
    if not (path / "config.json").is_file():
        raise UserError(f"{path} is not a Hugging Face checkpoint directory (no config.json)")


def ensure_default_model(repo_dir: Path) -> None:
    """The default model in ``repo_dir`` (exported in a child process if missing): a failed export exits 1."""
    try:
        default_model.ensure_default_model(repo_dir)
    except default_model.BootstrapFailed:
        raise typer.Exit(code=1) from None


class Provider(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class LogLevelChoice(str, Enum):
    critical = "critical"
    error = "error"
    warning = "warning"
    info = "info"
    debug = "debug"


class LogFormatChoice(str, Enum):
    text = "text"
    json = "json"


def _setting_default(name: str) -> str:
    """What ``serve --help`` shows as a default: the setting's default and the variable that overrides it."""
    return f"{Settings.model_fields[name].default} or $MIPIC_{name.upper()}"


@app.command()
def serve(
    host: Annotated[
        str | None, typer.Option(help="Bind address; 0.0.0.0 to listen beyond this machine.",
                                 show_default=_setting_default("host"))
    ] = None,
    port: Annotated[int | None, typer.Option(min=0, max=65535, help="TCP port.",
                                             show_default=_setting_default("port"))] = None,
    model: Annotated[
        Path | None,
        typer.Option("--model", help="Model directory, or a repository (follows its CURRENT pointer).",
                     show_default=_setting_default("model_dir")),
    ] = None,
    provider: Annotated[
        Provider | None, typer.Option(help="auto: CUDA when onnxruntime-gpu sees a GPU; force cpu to debug.",
                                      show_default=_setting_default("provider"))
    ] = None,
    log_level: Annotated[
        LogLevelChoice | None, typer.Option(help="Log level.", show_default=_setting_default("log_level"))
    ] = None,
    log_format: Annotated[
        LogFormatChoice | None,
        typer.Option(help="text, or json lines for a log collector (server, access and mipic lines alike).",
                     show_default=_setting_default("log_format")),
    ] = None,
) -> None:
    """Serve a model directory over HTTP (default: the bootstrapped all-MiniLM-L6-v2). Every other knob is
    a MIPIC_* environment variable (README: Configuration)."""
    from pydantic import ValidationError

    from mipic.service.app import create_app
    from mipic.service.server import run

    given = {"host": host, "port": port, "model_dir": model, "provider": provider and provider.value,
             "log_level": log_level and log_level.value, "log_format": log_format and log_format.value}
    try:
        settings = Settings(**{k: v for k, v in given.items() if v is not None})  # type: ignore[arg-type]
    except ValidationError as exc:
        raise UserError(f"bad setting: {one_line(exc)}") from None
    _setup_logging(settings.log_level, settings.log_format)
    if settings.model_dir == DEFAULT_MODEL_DIR and settings.bootstrap_default:
        ensure_default_model(settings.model_dir)
    _servable(settings.model_dir)
    run(create_app(settings), settings)


class BootstrapPrecision(str, Enum):
    fp32 = "fp32"
    int8 = "int8"


DEFAULT_CPU_PRECISION = BootstrapPrecision(default_model.DEFAULT_CPU_PRECISION)


@app.command()
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
    from mipic.training.release import bootstrap_release

    _output_path(out)
    _setup_logging()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    manifest = bootstrap_release(out, heads=heads, precision=precision.value)
    worst = max(manifest.parity.values())
    typer.echo(f"exported {manifest.model_id} to {out} (max parity error {worst:.2e}"
               f"{', with exit heads' if manifest.heads else ''})")


heads_app = typer.Typer(no_args_is_help=True, help="Exit heads: fit them on a model directory.")
app.add_typer(heads_app, name="heads")


class HeadMethod(str, Enum):
    distill = "distill"
    pca = "pca"
    lstsq = "lstsq"


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


MethodOption = Annotated[HeadMethod, typer.Option(
    help="distill (KL to the teacher, + align) | pca (closed-form rotation) | lstsq (closed-form map onto the "
         "last layer).")]


@heads_app.command("fit")
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
    from mipic.training.release import fit_and_attach_heads

    _output_path(out)
    _setup_logging()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        cfg = HeadFitConfig(method=method.value, sentences=sentences, passages=passages, steps=steps,
                            batch_size=batch_size, lr=lr, temperature=temperature, teacher_layer=teacher_layer,
                            teacher_dim=teacher_dim, last_layer=last_layer.value, max_length=max_length, seed=seed,
                            align_weight=align_weight, ridge=ridge)
    except ValueError as exc:
        raise UserError(one_line(exc)) from None
    manifest, seconds = fit_and_attach_heads(model, out, cfg, version=version,
                                             budget_items=eval_items if budgets else None)
    took = ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items())
    typer.echo(f"fitted {method.value} heads for {manifest.model_id} ({took}); wrote {out}")


@heads_app.command("save-default")
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
    from mipic.modeldir.manifest import load_manifest
    from mipic.training.release import save_default_heads

    _setup_logging()
    manifest = load_manifest(model)
    if manifest.heads is None or manifest.budgets is None:
        raise UserError(f"{model} has no exit heads or no budget table: run `mipic heads fit` on it first")
    typer.echo(f"wrote {save_default_heads(model, adapter=adapter, reproduce=reproduce)} and its metadata")


class Quantize(str, Enum):
    int8 = "int8"
    fp16 = "fp16"


@app.command()
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
    from mipic.training.precision import convert_precision
    from mipic.training.release import export_options_for, export_with_heads, heads_choice

    dim_list = _ints(dims, "--dims")
    if budget_items:
        _builtin_items(budget_items, "--budget-items")
    _checkpoint(checkpoint)
    _output_path(out)
    _setup_logging()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    manifest = export_with_heads(
        checkpoint,
        out,
        export_options_for(checkpoint, name=name, version=version, dims=dim_list, max_seq_length=max_seq_length),
        heads_choice(checkpoint, heads.value),
        budget_items=budget_items or None,
    )
    typer.echo(f"exported {manifest.model_id} to {out}")
    if quantize is not None:
        low_dir = out.with_name(f"{out.name}-{quantize.value}")
        low = convert_precision(out, low_dir, quantize.value)
        worst = min(low.parity.values(), default=float("nan"))
        typer.echo(f"wrote {quantize.value} copy to {low_dir} (worst cosine vs fp32 over all budgets: {worst:.4f})")


@app.command("eval")
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
    layer_list, dim_list = _ints(layers, "--layers"), _ints(dims, "--dims")
    if builtin:
        _builtin_items(max_items, "--max-items")
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
    _output_path(out)
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
    import json

    from mipic.modeldir.manifest import load_manifest

    if (model / "manifest.json").is_file():
        m = load_manifest(model, verify=False)
        num_layers, hidden, has_heads = m.num_layers, m.hidden_size, m.heads is not None
    else:
        _checkpoint(model)
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


RepoOption = Annotated[Path, typer.Option("--repo", help="Model repository: models/<name>.")]
DEFAULT_REPO = Path("models/all-minilm-l6-v2")


@app.command()
def register(
    source: Annotated[Path, typer.Argument(exists=True, file_okay=False, help="An exported model directory.")],
    repo: RepoOption = DEFAULT_REPO,
    version: Annotated[str | None, typer.Option(help="Version name (default: the manifest's).")] = None,
) -> None:
    """Copy an exported model into the repository as a new version (not served until promoted)."""
    from mipic.modeldir.repository import ModelRepository

    _output_path(repo, "repository")
    _setup_logging()
    typer.echo(f"registered version {ModelRepository(repo).register(source, version)} in {repo}")


@app.command()
def promote(
    version: Annotated[str, typer.Argument(help="Version to serve.")],
    repo: RepoOption = DEFAULT_REPO,
) -> None:
    """Verify a version (schema, checksums) and point CURRENT at it; servers watching the repo switch."""
    from mipic.modeldir.repository import ModelRepository

    _setup_logging()
    ModelRepository(_existing_repo(repo)).promote(version)  # refusals: one line, exit 2
    typer.echo(f"{repo}: now serving version {version}")


@app.command()
def rollback(repo: RepoOption = DEFAULT_REPO) -> None:
    """Point CURRENT back at the previously promoted version."""
    from mipic.modeldir.repository import ModelRepository

    _setup_logging()
    version = ModelRepository(_existing_repo(repo)).rollback()  # refusals: one line, exit 2
    typer.echo(f"{repo}: rolled back to version {version}")


@app.command()
def versions(repo: RepoOption = DEFAULT_REPO) -> None:
    """List the repository's versions; the served one is marked with *."""
    from mipic.modeldir.repository import ModelRepository

    r = ModelRepository(_existing_repo(repo))
    current = r.current()
    found = r.versions()
    if not found:
        raise UserError(f"{repo} holds no model versions")
    for v in found:
        typer.echo(f"{'*' if v == current else ' '} {v}")


InitOption = Annotated[
    Path | None,
    typer.Option(exists=True, file_okay=False,
                 help="Start from these weights (an encoder dir or a checkpoint-N of an earlier run)."),
]
OutputDirOption = Annotated[
    Path | None, typer.Option(help="Where checkpoints and final/ go (overrides train.output_dir).")
]
ResumeOption = Annotated[bool, typer.Option(help="Continue from the latest checkpoint-N in the output dir, if any.")]
LogLevelOption = Annotated[LogLevelChoice, typer.Option(help="Log level.")]
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
        raise UserError(f"bad config {config}: {one_line(exc)}") from None


@app.command()
def train(
    config: Annotated[Path, typer.Option("--config", exists=True, dir_okay=False,
                                         help="YAML training config (see configs/).")],
    init: InitOption = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a config value, e.g. --set train.max_steps=50 (repeatable)."),
    ] = None,
    output_dir: OutputDirOption = None,
    resume: ResumeOption = False,
    log_level: LogLevelOption = LogLevelChoice.info,
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
    config: Annotated[
        Path, typer.Option(exists=True, dir_okay=False, help="Retrain pipeline YAML (not a training config).")
    ] = Path("configs/retrain_minilm.yaml"),
    run_id: Annotated[str | None, typer.Option(help="Resume this run (finished steps are skipped).")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override: key.sub=value")] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Check the config, print the plan, and stop: nothing runs or is written.")
    ] = False,
) -> None:
    """Train → export → evaluate → quality gate → register → promote; a failure changes nothing served."""
    import yaml

    from mipic.training.pipeline import GateFailed, Pipeline, load_retrain_config, plan

    _setup_logging()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        cfg = load_retrain_config(config, set_ or [])
        steps = plan(cfg) if dry_run else []
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise UserError(f"bad retrain config {config}: {one_line(exc)}") from None
    if dry_run:
        typer.echo(f"retrain plan for {config} (dry run: nothing was run or written)")
        for line in steps:
            typer.echo(f"  {line}")
        return
    pipeline = Pipeline(cfg, run_id=run_id)
    typer.echo(f"retrain run {pipeline.run_id} in {pipeline.dir}")
    try:
        state = pipeline.run()
    except GateFailed as exc:
        typer.echo(f"quality gate failed, nothing promoted: {exc}", err=True)
        raise typer.Exit(code=2) from exc
    typer.echo(f"done: {', '.join(state.get('done', []))}; served version: {pipeline.repo.current()}")


@app.command()
def pretrain(
    config: Annotated[Path, typer.Option("--config", exists=True, dir_okay=False,
                                         help="YAML pretraining config (configs/jepa_minilm.yaml).")],
    init: InitOption = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a config value, e.g. --set balance.mode=sigmoid (repeatable)."),
    ] = None,
    output_dir: OutputDirOption = None,
    resume: ResumeOption = False,
    log_level: LogLevelOption = LogLevelChoice.info,
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

    missing = [m for m in models if m != "packaged" and not Path(m).is_dir()]
    if missing:
        raise UserError(f"model {missing[0]} is not a directory (give checkpoint directories or 'packaged')")
    _output_path(out)
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
    except ValueError as exc:  # names that do not match the models, a layer the model lacks
        raise UserError(one_line(exc)) from None
    for r in reports:
        cells = ", ".join(f"{v} {g.uniformity:.4f}" for v, g in r.poolings.items())
        typer.echo(f"{r.name}: uniformity {cells}")
    typer.echo(f"wrote {out}/geometry.md, geometry.json, spectrum.png")


class EmbeddingType(str, Enum):
    float = "float"
    int8 = "int8"
    uint8 = "uint8"
    binary = "binary"
    ubinary = "ubinary"


class OnErrorChoice(str, Enum):
    raise_ = "raise"
    skip = "skip"


def _budgets(dim: int | None, layer: int | None, budget: list[str] | None) -> list[tuple[int | None, int | None]]:
    """``--budget 64:3`` (repeatable) or ``--dim/--layer``, not both; nothing given = the full model."""
    if budget and (dim is not None or layer is not None):
        raise typer.BadParameter("give --budget, or --dim/--layer, not both", param_hint="--budget")
    if not budget:
        return [(dim, layer)]
    from mipic.corpus.job import parse_budget

    try:
        return [parse_budget(b) for b in budget]
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--budget") from None


@app.command()
def embed(
    input_path: Annotated[Path, typer.Argument(metavar="INPUT", help="JSONL, CSV or Parquet, one text a row.")],
    output: Annotated[Path, typer.Argument(help="Parquet (id + one vector column per budget), or .npy (one budget; "
                                           "ids beside it in OUTPUT-stem.ids.jsonl).")],
    model: Annotated[Path, typer.Option(help="Model directory, or a repository (its CURRENT version).")] = (
        DEFAULT_MODEL_DIR),
    dim: Annotated[int | None, typer.Option(help="Matryoshka dim: smaller makes the index smaller (default: full).")
                   ] = None,
    layer: Annotated[int | None, typer.Option(help="Exit layer: fewer layers embed faster (default: the last).")
                     ] = None,
    budget: Annotated[list[str] | None, typer.Option(
        help="DIM:LAYER, repeatable instead of --dim/--layer: several budgets in one pass, shared layers run once "
             "(--budget 64:3 --budget 384:6 runs layers 1-3 once).")] = None,
    embedding_type: Annotated[EmbeddingType, typer.Option(
        help="float, int8/uint8 (calibrated ranges, 4x smaller), binary/ubinary (1 bit a value, 32x smaller).")
    ] = EmbeddingType.float,
    text_field: Annotated[str, typer.Option(help="The field (JSONL) or column (CSV, Parquet) holding the text.")
                          ] = "text",
    id_field: Annotated[str | None, typer.Option(
        help="A field holding each row's id, written as text (default: the 0-based row number).")] = None,
    input_format: Annotated[str | None, typer.Option(help="jsonl, csv or parquet (default: from the suffix).")
                            ] = None,
    on_error: Annotated[OnErrorChoice, typer.Option(
        help="raise: stop at the first bad row, naming it; skip: leave bad rows out and count them.")
    ] = OnErrorChoice.raise_,
    window: Annotated[int, typer.Option(min=1, help="Rows read, sorted by length and run together; also the unit "
                                        "of resume. Larger groups lengths better, costs more memory.")
                      ] = DEFAULT_WINDOW_ROWS,
    overwrite: Annotated[bool, typer.Option(help="Replace OUTPUT and discard an unfinished run's parts.")] = False,
    threads: Annotated[int, typer.Option(min=0, help="onnxruntime threads (0 = every core).")] = 0,
    max_batch_tokens: Annotated[int, typer.Option(min=1, help="Padded tokens per sub-batch: the fastest on 2 "
                                                  "cores; raise it on machines with larger caches.")
                                ] = DEFAULT_BATCH_TOKENS,
    progress: Annotated[bool, typer.Option(help="Progress bar with texts/s and ETA on stderr.")] = True,
    ray: Annotated[str | None, typer.Option(
        help="Run on Ray Data: 'local' starts Ray here, 'auto' or ray://HOST:10001 joins a cluster.")] = None,
    ray_actors: Annotated[int | None, typer.Option(min=1, help="Ray actors, each loading the model once "
                                                   "(default: the cluster's CPUs / --ray-cpus-per-actor).")] = None,
    ray_cpus_per_actor: Annotated[int, typer.Option(min=1, help="CPUs (onnxruntime threads) per Ray actor.")] = 1,
) -> None:
    """Embed a corpus at a budget, in process (no HTTP), resumable: a re-run of an interrupted job continues,
    and its output equals an uninterrupted run's."""
    from mipic.corpus.inputs import CorpusError, Source, detect_format
    from mipic.corpus.job import EmbedJob, embed_corpus
    from mipic.modeldir.errors import EngineError
    from mipic.modeldir.repository import resolve_model_dir

    budgets = _budgets(dim, layer, budget)
    _setup_logging("warning")
    if model == DEFAULT_MODEL_DIR:
        ensure_default_model(model)
    _servable(model)
    version_dir, _ = resolve_model_dir(model)
    try:
        source = Source(input_path, detect_format(input_path, input_format), text_field, id_field)
        resolved = _resolve_budgets(version_dir, budgets)
        job = EmbedJob(source, output, version_dir, resolved, embedding_type.value, window, on_error.value,
                       overwrite, threads, max_batch_tokens)
        result = embed_corpus(job, progress=progress, ray_address=ray, ray_actors=ray_actors,
                              ray_cpus_per_actor=ray_cpus_per_actor)
    except (CorpusError, EngineError) as exc:
        raise UserError(one_line(exc)) from None
    for line in result.skipped_examples:
        typer.echo(f"skipped: {line}", err=True)
    skipped = f", skipped {result.skipped} bad rows" if result.skipped else ""
    resumed = f", {result.resumed_windows} of {result.windows} windows from an earlier run" if (
        result.resumed_windows) else ""
    typer.echo(f"embedded {result.rows} texts at {', '.join(f'{d}:{ly}' for d, ly in resolved)} into {output} in "
               f"{result.seconds:.1f} s ({result.texts_per_s:.0f} texts/s{skipped}{resumed})")


def _resolve_budgets(model_dir: Path, budgets: list[tuple[int | None, int | None]]) -> tuple[tuple[int, int], ...]:
    """Defaults filled in from the manifest (full width, last layer); the runner checks the rest."""
    from mipic.modeldir.manifest import load_manifest

    manifest = load_manifest(model_dir, verify=False)
    out = tuple((manifest.hidden_size if d is None else d, manifest.num_layers if ly is None else ly)
                for d, ly in budgets)
    if len(set(out)) < len(out):
        raise UserError(f"a budget is given twice: {', '.join(f'{d}:{ly}' for d, ly in out)}")
    return out


def main() -> None:
    app()


if __name__ == "__main__":
    main()
