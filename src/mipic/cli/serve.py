"""``mipic serve``: the settings from flags and ``MIPIC_*`` variables, the model (the default one exported on
first use), then the HTTP server. FastAPI and uvicorn load only when the server starts."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

from mipic.cli.base import LogLevelChoice, UserError, one_line, servable, start
from mipic.service.settings import Settings


class Provider(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class LogFormatChoice(str, Enum):
    text = "text"
    json = "json"


def _setting_default(name: str) -> str:
    """What ``serve --help`` shows as a default: the setting's default and the variable that overrides it."""
    return f"{Settings.model_fields[name].default} or $MIPIC_{name.upper()}"


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
    workers: Annotated[
        int | None,
        typer.Option(min=1, max=64, help="Server processes sharing the port (each its own model copy and share of "
                     "the cores): more texts/s at saturation, a lone request slower.",
                     show_default=_setting_default("workers")),
    ] = None,
) -> None:
    """Serve a model directory over HTTP (default: the bootstrapped all-MiniLM-L6-v2). Every other knob is
    a MIPIC_* environment variable (README: Configuration)."""
    from mipic.service.app import create_app
    from mipic.service.server import run
    from mipic.service.workers import supervise

    given = {"host": host, "port": port, "model_dir": model, "provider": provider and provider.value,
             "log_level": log_level and log_level.value, "log_format": log_format and log_format.value,
             "workers": workers}
    try:
        settings = Settings(**{k: v for k, v in given.items() if v is not None})  # type: ignore[arg-type]
    except ValidationError as exc:
        raise UserError(f"bad setting: {one_line(exc)}") from None
    start(settings.log_level, settings.log_format)
    servable(settings.model_dir, bootstrap=settings.bootstrap_default)
    if settings.workers > 1:
        raise typer.Exit(supervise(settings))
    run(create_app(settings), settings)
