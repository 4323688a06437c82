"""Commands over a model repository (``models/<name>/<version>`` + ``CURRENT``): ``register``, ``promote``,
``rollback``, ``versions``. The repository refuses what it cannot do in one line (exit 2)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mipic.cli.base import UserError, check_output, start
from mipic.modeldir.repository import ModelRepository

RepoOption = Annotated[Path, typer.Option("--repo", help="Model repository: models/<name>.")]
DEFAULT_REPO = Path("models/all-minilm-l6-v2")


def _existing_repo(repo: Path) -> ModelRepository:
    if not repo.exists():
        raise UserError(f"no model repository at {repo} (no such directory)")
    if not repo.is_dir():
        raise UserError(f"{repo} is not a directory, so not a model repository")
    return ModelRepository(repo)


def register(
    source: Annotated[Path, typer.Argument(exists=True, file_okay=False, help="An exported model directory.")],
    repo: RepoOption = DEFAULT_REPO,
    version: Annotated[str | None, typer.Option(help="Version name (default: the manifest's).")] = None,
) -> None:
    """Copy an exported model into the repository as a new version (not served until promoted)."""
    check_output(repo, "repository")
    start()
    typer.echo(f"registered version {ModelRepository(repo).register(source, version)} in {repo}")


def promote(
    version: Annotated[str, typer.Argument(help="Version to serve.")],
    repo: RepoOption = DEFAULT_REPO,
) -> None:
    """Verify a version (schema, checksums) and point CURRENT at it; servers watching the repo switch."""
    start()
    _existing_repo(repo).promote(version)  # refusals: one line, exit 2
    typer.echo(f"{repo}: now serving version {version}")


def rollback(repo: RepoOption = DEFAULT_REPO) -> None:
    """Point CURRENT back at the previously promoted version."""
    start()
    version = _existing_repo(repo).rollback()  # refusals: one line, exit 2
    typer.echo(f"{repo}: rolled back to version {version}")


def versions(repo: RepoOption = DEFAULT_REPO) -> None:
    """List the repository's versions; the served one is marked with *."""
    r = _existing_repo(repo)
    current = r.current()
    found = r.versions()
    if not found:
        raise UserError(f"{repo} holds no model versions")
    for v in found:
        typer.echo(f"{'*' if v == current else ' '} {v}")
