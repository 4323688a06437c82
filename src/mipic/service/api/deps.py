"""Typed dependencies shared by the routers.

All ``async def``: FastAPI runs a plain ``def`` dependency in its thread pool, a thread hand-off per dependency per
request (five on the embed routes) for functions that only read ``request``; on the event loop they cost
nothing (profiled: the hand-offs were the largest cost of a request after the model).
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request

from mipic.service.api.errors import Unauthorized, UnsupportedMediaType
from mipic.service.engine.engine import Engine
from mipic.service.metrics import Metrics
from mipic.service.settings import Settings


async def get_engine(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_metrics(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.metrics
    return metrics


EngineDep = Annotated[Engine, Depends(get_engine)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]


async def require_json(request: Request) -> None:
    """415 for anything but JSON bodies: a form post or plain text is a client bug, say so."""
    content_type = request.headers.get("content-type", "")
    media = content_type.split(";")[0].strip().lower()
    if media != "application/json" and not media.endswith("+json"):
        raise UnsupportedMediaType("Content-Type must be application/json", "unsupported_media_type")


def bearer_matches(request: Request, secret: str) -> bool:
    """Constant-time comparison of the ``Authorization: Bearer`` token."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), secret.encode())


async def require_api_key(request: Request, settings: SettingsDep) -> None:
    if settings.api_key is None:
        return
    if not bearer_matches(request, settings.api_key.get_secret_value()):
        raise Unauthorized("missing or invalid API key", "invalid_api_key")


#: The dependencies of every route that reads a JSON body for a client (embed, tokenize, decode, on each surface):
#: 415 for another body, then 401 without the key.
JSON_IN = [Depends(require_json), Depends(require_api_key)]
