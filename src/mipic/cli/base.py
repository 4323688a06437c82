"""What every command group shares: the one-line error contract, the checks made before any work, and the
option types more than one group uses. Imports nothing heavier than the model directory's metadata.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from enum import Enum
from pathlib import Path
from typing import Any

import typer
from typer.core import TyperGroup

from mipic.logs import LogFormat, LogLevel, setup_logging
from mipic.modeldir.manifest import ManifestError, load_manifest
from mipic.modeldir.repository import RepositoryError, resolve_model_dir
from mipic.service.settings import DEFAULT_MODEL_DIR
from mipic.training import default_model

HELP = """``mipic``: one command-line entry point. Training imports are lazy so ``serve`` never loads torch.

A user error (a path that does not exist, a bad value, a config that does not validate, a version the
repository refuses) is one line on stderr and exit code 2, never a traceback.
"""


class UserError(Exception):
    """Something the user asked for cannot be done as given: one line on stderr, exit 2."""


# Errors that are about the user's input, whichever command raises them.
USER_ERRORS: tuple[type[Exception], ...] = (UserError, ManifestError, RepositoryError, default_model.NoDefaultModel)


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


class OneLineErrors(TyperGroup):
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


def start(level: LogLevel = "info", fmt: LogFormat = "text", *, offline: bool = False) -> None:
    """A command's start, once its arguments are checked: mipic's log format; ``offline`` for the commands that
    load Hugging Face checkpoints or data (never the Hub)."""
    setup_logging(level, fmt)
    if offline:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")


class LogLevelChoice(str, Enum):
    critical = "critical"
    error = "error"
    warning = "warning"
    info = "info"
    debug = "debug"


# ---------------------------------------------------------------------------------------------------- checks

# The built-in suites sample this many items at least: with fewer (the CLI's seed 0) a BBC topic keeps a
# single example and the classification probe's stratified folds fail; 30 leaves every topic two.
BUILTIN_MIN_ITEMS = 30


def check_builtin_items(items: int, option: str) -> None:
    if items < BUILTIN_MIN_ITEMS:
        raise typer.BadParameter(f"{items} is below the built-in suites' minimum of {BUILTIN_MIN_ITEMS} items",
                                 param_hint=option)


def parse_ints(text: str | None, option: str) -> list[int] | None:
    """``"16,32"`` → [16, 32]; a bad item is a usage error naming the option."""
    if text is None:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a comma-separated list of integers", param_hint=option) from None


def check_output(path: Path, what: str = "output") -> None:
    """``path`` must be a directory or creatable as one."""
    if path.exists() and not path.is_dir():
        raise UserError(f"{what} {path} exists and is not a directory")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UserError(f"cannot create {what} {path}: {parent} is not a directory")
            break


def check_checkpoint(path: Path) -> None:
    if not (path / "config.json").is_file():
        raise UserError(f"{path} is not a Hugging Face checkpoint directory (no config.json)")


def servable(path: Path, *, bootstrap: bool) -> Path:
    """What ``serve`` and ``embed`` load: a model directory, or a repository whose CURRENT can be followed;
    with ``bootstrap``, the default path gets the default model exported on first use. Returns the version
    directory."""
    if bootstrap and path == DEFAULT_MODEL_DIR:
        try:
            default_model.ensure_default_model(path)
        except default_model.BootstrapFailed:  # the child has said why
            raise typer.Exit(code=1) from None
    if not path.exists():
        raise UserError(f"model directory {path} does not exist")
    if not path.is_dir():
        raise UserError(f"model directory {path} is not a directory")
    version_dir, _ = resolve_model_dir(path)
    load_manifest(version_dir, verify=False)
    return version_dir
