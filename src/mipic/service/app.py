"""App factory: settings in, a FastAPI app out. The lifespan loads and warms the model."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, HTTPException
from fastapi.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mipic.modeldir.runner import LoadedModel
from mipic.service.api import (
    routes_admin,
    routes_budgets,
    routes_embed,
    routes_health,
    routes_openai,
    routes_tei,
    routes_ui,
)
from mipic.service.api.errors import body_for_path, count_error, error_body, install_error_handlers
from mipic.service.engine.batcher import BatchStats
from mipic.service.engine.engine import Engine
from mipic.service.metrics import Metrics
from mipic.service.settings import Settings

logger = logging.getLogger(__name__)

EMBED_ENDPOINTS = frozenset({"/embed", "/v1/embeddings", "/tei", "/tei/embed"})


class GuardMiddleware:
    """Pure ASGI: 413 for oversized bodies (declared or streamed) and a status count per embed request.

    Pure ASGI rather than BaseHTTPMiddleware so that client disconnects still reach the route.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, metrics: Metrics) -> None:
        self.app, self.max_bytes, self.metrics = app, max_bytes, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        status_holder = {"status": 0}

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_holder["status"] = message["status"]
            await send(message)

        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._reject(send_wrapper, path)
            count_error(scope, "request_too_large")
            self._count(path, 413)
            return
        received = 0

        async def receive_wrapper() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # FastAPI re-raises its own HTTPException from body parsing: the error table answers.
                    raise HTTPException(413, f"request body exceeds {self.max_bytes} bytes")
            return message

        await self.app(scope, receive_wrapper, send_wrapper)
        self._count(path, status_holder["status"] or 499)

    async def _reject(self, send: Send, path: str) -> None:
        body = json.dumps(body_for_path(path, 413, f"request body exceeds {self.max_bytes} bytes",
                                        "invalid_request_error", "request_too_large", None)).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    def _count(self, path: str, status: int) -> None:
        if path in EMBED_ENDPOINTS:
            self.metrics.requests.labels(path, str(status)).inc()


class DrainGuard:
    """Pure ASGI: at the drain deadline the server cancels the requests still running; each is answered
    503 ``draining`` (JSON, ``Retry-After``) here instead of uvicorn's plain-text 500 and a CancelledError
    traceback. A cancellation outside a drain is left alone."""

    def __init__(self, app: ASGIApp, engine: Engine, retry_after: int) -> None:
        self.app, self.engine, self.retry_after = app, engine, retry_after

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_wrapper(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if not self.engine.draining or task is None:
                raise
            task.uncancel()  # answered on purpose: this request's task ends normally
            if not started:
                await self._answer(scope, send)

    async def _answer(self, scope: Scope, send: Send) -> None:
        body = json.dumps(error_body("server shut down before this request finished; retry on another replica",
                                     "service_unavailable", "draining", None)).encode()
        await send({"type": "http.response.start", "status": 503,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()),
                                (b"retry-after", str(self.retry_after).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})
        count_error(scope, "draining")


def create_app(settings: Settings | None = None, metrics: Metrics | None = None) -> FastAPI:
    settings = settings or Settings()
    metrics = metrics or Metrics()

    def on_batch(stats: BatchStats) -> None:
        v = stats.model_version
        metrics.batch_size.labels(v).observe(stats.size)
        metrics.batch_tokens.labels(v).observe(stats.padded_tokens)
        metrics.inference_duration.labels(v).observe(stats.inference_seconds)
        for q in stats.queue_seconds:
            metrics.queue_duration.labels(v).observe(q)
        if metrics.multiproc_dir:  # a scrape sets these for its own worker only: keep every worker's current
            metrics.queue_depth.set(engine.batcher.depth)
            metrics.observe_shed(engine.batcher.shed_rows)

    def on_swap(old: LoadedModel | None, new: LoadedModel) -> None:
        if old is not None:
            metrics.retire_model(old.manifest.name, old.version, old.runtime.provider)
        metrics.model_info.labels(new.manifest.name, new.version, new.runtime.provider).set(1)

    engine = Engine(settings, on_batch=on_batch, on_swap=on_swap)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await engine.start(settings.model_dir)
        metrics.ready.set(1)
        try:
            yield
        finally:
            metrics.ready.set(0)
            await engine.stop()

    app = FastAPI(
        title="mipic embeddings",
        summary="Matryoshka embeddings at a client-chosen dimension and exit layer",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.engine = engine
    install_error_handlers(app, settings.retry_after_seconds)
    routers = (routes_embed.router, routes_openai.router, routes_tei.router, routes_health.router,
               routes_budgets.router, routes_admin.router, routes_ui.router)
    for router in routers:
        app.include_router(router)
    # the bounded `endpoint` label values of error metrics (errors.endpoint_label)
    app.state.endpoints = frozenset(str(r.path) for router in routers for r in router.routes if hasattr(r, "path"))
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["authorization", "content-type"])
    # Inside GuardMiddleware, so the 503s it sends are counted like any other status.
    app.add_middleware(DrainGuard, engine=engine, retry_after=settings.retry_after_seconds)
    app.add_middleware(GuardMiddleware, max_bytes=settings.max_request_bytes, metrics=metrics)
    return app
