"""uvicorn with a graceful drain: on SIGTERM keep the socket open, answer new requests 503, finish
accepted ones (bounded by ``drain_timeout_s``), then exit. Kubernetes sees /ready fail meanwhile."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from types import FrameType

import uvicorn
from fastapi import FastAPI

from mipic.service.engine.engine import Engine
from mipic.service.settings import Settings

logger = logging.getLogger(__name__)


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, engine: Engine, drain_timeout_s: float) -> None:
        super().__init__(config)
        self.engine = engine
        self.drain_timeout_s = drain_timeout_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain_started = False

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._drain_started or self._loop is None or sig != signal.SIGTERM:
            super().handle_exit(sig, frame)  # a second signal, or Ctrl-C: uvicorn's own shutdown
            return
        self._drain_started = True
        logger.info("SIGTERM: draining for up to %.0f s", self.drain_timeout_s)
        self._loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self._drain_then_exit(sig, frame)))

    async def _drain_then_exit(self, sig: int, frame: FrameType | None) -> None:
        done = await self.engine.drain(self.drain_timeout_s)
        logger.info("drain %s; shutting down", "complete" if done else "timed out")
        super().handle_exit(sig, frame)


def run(app: FastAPI, settings: Settings, log_level: str = "info") -> None:
    config = uvicorn.Config(
        app, host=settings.host, port=settings.port, workers=1, log_level=log_level,
        timeout_graceful_shutdown=max(1, int(settings.drain_timeout_s)),
    )
    DrainingServer(config, app.state.engine, settings.drain_timeout_s).run()
