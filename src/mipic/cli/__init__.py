"""The ``mipic`` command line: the table of commands, in the order ``mipic --help`` lists them.

Each command group is a module of thin commands (parse, call, print): ``serve``, ``model`` (bootstrap, export,
exit heads, calibration), ``evaluate``, ``repository``, ``train`` and ``embed``; what they share (the one-line
error contract, the checks made before any work) is ``base``. A group imports its heavy library (torch,
FastAPI, pyarrow) inside its commands, so ``mipic --help`` and ``mipic serve`` never load torch.
"""

from __future__ import annotations

import importlib.metadata
from typing import Annotated

import typer

from mipic.cli import embed, evaluate, model, repository, serve, train
from mipic.cli.base import BUILTIN_MIN_ITEMS, HELP, OneLineErrors
from mipic.cli.embed import EmbeddingType
from mipic.cli.model import DEFAULT_CPU_PRECISION

__all__ = ["BUILTIN_MIN_ITEMS", "DEFAULT_CPU_PRECISION", "EmbeddingType", "app", "main"]

app = typer.Typer(cls=OneLineErrors, add_completion=False, no_args_is_help=True, help=HELP)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"mipic {importlib.metadata.version('mipic')}")
        raise typer.Exit()


@app.callback(help=HELP)
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    pass


app.command()(serve.serve)
app.command()(model.bootstrap)
heads_app = typer.Typer(no_args_is_help=True, help="Exit heads: fit them on a model directory.")
heads_app.command("fit")(model.heads_fit)
heads_app.command("save-default")(model.heads_save_default)
app.add_typer(heads_app, name="heads")
app.command()(model.calibrate)
app.command()(model.export)
app.command("eval")(evaluate.eval_)
app.command()(repository.register)
app.command()(repository.promote)
app.command()(repository.rollback)
app.command()(repository.versions)
app.command()(train.train)
app.command()(train.retrain)
app.command()(train.pretrain)
app.command()(evaluate.geometry)
app.command()(embed.embed)


def main() -> None:
    app()
