"""Commands that train: ``train`` (an encoder), ``pretrain`` (continued MLM / MLM + JEPA) and ``retrain``
(train → export → evaluate → gate → promote). Flags become config overrides here; a config that does not
validate is one line (exit 2). The trainers (torch) are imported when a command runs."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer

from mipic.cli.base import LogLevelChoice, UserError, one_line, start

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
    log_level: LogLevelChoice,
) -> ConfigT:
    """Shared start of `train` and `pretrain`: logging, offline env, overrides, config validation (exit 2)."""
    start(log_level.value, offline=True)
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

    start(offline=True)
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
