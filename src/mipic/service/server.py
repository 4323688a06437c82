"""uvicorn with a bounded graceful drain, request-head limits and one log format.

On SIGTERM, with D = ``drain_timeout_s``:

- t = 0: the engine stops admitting (new embed requests get 503 ``draining``, ``/ready`` fails so
  Kubernetes drops the pod from its endpoints); the socket stays open, so late requests get that answer.
- t ≤ D: the requests accepted before the signal finish. At D, every request still running is
  cancelled and answered 503 ``draining`` with ``Retry-After`` (``app.DrainGuard``); its queued rows are
  dropped unrun.
- t ≤ D + :data:`SHUTDOWN_MARGIN_S`: uvicorn closes the connections (waiting at most
  :data:`UVICORN_GRACE_S` for stragglers), the lifespan closes the batcher and the model without waiting
  for a batch still on the worker thread, and the process exits (killed by the re-raised SIGTERM, as
  uvicorn does).

A second SIGTERM, or Ctrl-C, skips the drain: uvicorn's own shutdown, bounded by the same grace.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import time
from types import FrameType

import uvicorn
from fastapi import FastAPI

from mipic.logs import logging_config
from mipic.modeldir.runner import pin_single_thread_blas
from mipic.service.api.errors import OTHER_ENDPOINT
from mipic.service.engine.engine import Engine
from mipic.service.engine.errors import EngineError
from mipic.service.metrics import Metrics
from mipic.service.protocol import HeadLimits, limited_protocol
from mipic.service.settings import Settings

logger = logging.getLogger(__name__)

# What shutdown may add to the drain timeout; the deploy files' grace periods are checked against it.
SHUTDOWN_MARGIN_S = 2.0
# uvicorn's wait for connections and tasks after the drain (its ``timeout_graceful_shutdown``): everything
# accepted has had D already, so this only covers requests that arrived during the drain.
UVICORN_GRACE_S = 1


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, engine: Engine, drain_timeout_s: float) -> None:
        super().__init__(config)
        self.engine = engine
        self.drain_timeout_s = drain_timeout_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain_started = False
        self._drain_task: asyncio.Task[None] | None = None
        self._reload_task: asyncio.Task[None] | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.add_signal_handler(signal.SIGHUP, self._reload_current)
        try:
            await super().serve(sockets)
        finally:
            self._loop.remove_signal_handler(signal.SIGHUP)

    def _reload_current(self) -> None:
        """SIGHUP: reload the repository's CURRENT, as ``POST /admin/reload`` without a body does; a failure is
        logged and the served version stays."""
        async def reload() -> None:
            try:
                model_id, changed = await self.engine.reload()
            except EngineError as exc:
                logger.warning("SIGHUP reload refused: %s", exc)
            else:
                logger.info("SIGHUP reload: serving %s%s", model_id, "" if changed else " (unchanged)")

        self._reload_task = asyncio.ensure_future(reload())

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._drain_started or self._loop is None or sig != signal.SIGTERM:
            super().handle_exit(sig, frame)  # a second signal, or Ctrl-C: uvicorn's own shutdown
            return
        self._drain_started = True
        self._loop.call_soon_threadsafe(self._start_drain, sig, frame)

    def _start_drain(self, sig: int, frame: FrameType | None) -> None:
        self._drain_task = asyncio.ensure_future(self._drain_then_exit(sig, frame))

    async def _drain_then_exit(self, sig: int, frame: FrameType | None) -> None:
        accepted = set(self.server_state.tasks)  # requests running when the signal came
        logger.info("SIGTERM: draining %d requests for up to %.1f s", len(accepted), self.drain_timeout_s)
        t0 = time.monotonic()
        done = await self.engine.drain(self.drain_timeout_s, lambda: all(t.done() for t in accepted))
        if done:
            logger.info("drain complete in %.1f s; shutting down", time.monotonic() - t0)
        else:
            unfinished = [t for t in self.server_state.tasks if not t.done()]
            logger.warning("drain timeout of %.1f s reached: answering %d unfinished requests 503 draining",
                           self.drain_timeout_s, len(unfinished))
            for task in unfinished:
                task.cancel()
        super().handle_exit(sig, frame)


def uvicorn_config(app: FastAPI, settings: Settings, configure_logging: bool = True) -> uvicorn.Config:
    """The server's uvicorn configuration: one worker, the limited protocol, mipic's log format
    (``configure_logging=False`` leaves the process's logging alone, for servers run inside tests)."""
    metrics: Metrics = app.state.metrics

    def count(code: str) -> None:
        metrics.errors.labels(OTHER_ENDPOINT, code).inc()

    limits = HeadLimits(max_bytes=settings.max_header_bytes, max_count=settings.max_header_count,
                        timeout_s=settings.request_head_timeout_s, on_error=count)
    return uvicorn.Config(
        app, host=settings.host, port=settings.port, workers=1,
        log_level=settings.log_level,
        log_config=logging_config(settings.log_level, settings.log_format) if configure_logging else None,
        http=limited_protocol(limits),
        timeout_keep_alive=settings.keep_alive_timeout_s,
        timeout_graceful_shutdown=UVICORN_GRACE_S,
    )


def run(app: FastAPI, settings: Settings, sockets: list[socket.socket] | None = None) -> None:
    """Serve until SIGTERM/SIGINT (then drain); SIGHUP reloads. ``sockets``: listen there instead of binding
    host:port (a worker of ``workers.Supervisor``). This process's only BLAS work is the exit heads: BLAS is set
    to one thread once here rather than limited around every batch (``pin_single_thread_blas``)."""
    pin_single_thread_blas()
    DrainingServer(uvicorn_config(app, settings), app.state.engine, settings.drain_timeout_s).run(sockets)
