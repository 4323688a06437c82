"""``mipic``: one command-line entry point. Training imports are lazy so ``serve`` never loads torch."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
logger = logging.getLogger("mipic")


def _setup_logging(level: str = "info") -> None:
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )


def ensure_default_model(model_dir: Path) -> None:
    """Export the packaged MiniLM into ``model_dir`` in a child process (the server must not import torch)."""
    if (model_dir / "manifest.json").is_file():
        return
    logger.info("no model at %s: exporting the packaged all-MiniLM-L6-v2 (first run, ~20 s)", model_dir)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "mipic.cli", "bootstrap", "--out", str(model_dir)]
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
) -> None:
    """Export the packaged all-MiniLM-L6-v2 to the staged ONNX format (needs the training extras)."""
    from mipic.training.export import bootstrap_default_model

    _setup_logging()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    manifest = bootstrap_default_model(out)
    worst = max(manifest.parity.values())
    typer.echo(f"exported {manifest.model_id} to {out} (max parity error {worst:.2e})")


@app.command()
def export(
    checkpoint: Annotated[Path, typer.Argument(help="Hugging Face checkpoint directory.")],
    out: Annotated[Path, typer.Argument(help="Output model directory.")],
    name: Annotated[str, typer.Option(help="Model name in the manifest.")] = "mipic-model",
    version: Annotated[str, typer.Option(help="Model version in the manifest.")] = "1",
    dims: Annotated[str | None, typer.Option(help="Comma-separated allowed dims.")] = None,
    max_seq_length: Annotated[int | None, typer.Option(help="Max tokens per input.")] = None,
) -> None:
    """Export a checkpoint to the staged ONNX format, refusing it if parity with PyTorch fails."""
    from mipic.training.export import ExportOptions, export_pretrained

    _setup_logging()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    dim_list = [int(d) for d in dims.split(",")] if dims else None
    manifest = export_pretrained(
        checkpoint,
        out,
        ExportOptions(name=name, version=version, dims=dim_list, max_seq_length=max_seq_length),
    )
    typer.echo(f"exported {manifest.model_id} to {out}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
