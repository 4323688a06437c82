"""``mipic serve`` with ``workers`` > 1: N whole server processes sharing one listening socket.

Why: one process's onnxruntime threads share their cores with its event loop and wait for each other at every
operator's parallel section; a process per core has neither cost. Measured on 2 cores (README, Benchmarks), two
processes of one onnxruntime thread each against one process of two, texts/s at saturation: 1.11× (1.02–1.22)
at d384/l6 and 1.20× (1.06–1.25) at d64/l1 in a scratch run, 0.99× (0.68–0.99), 1.08× (d64/l6) and 1.11×
(0.91–1.14) in ``bench.ratios``. The price: each worker holds its own copy of the model (memory × N), and a
lone request runs on 1/N of the cores (at half saturation p50/p99 68/210 ms against 55/146 ms), so the default
stays one worker.

The parent (this module's :class:`Supervisor`) binds the socket once, then starts the workers with
multiprocessing's *spawn* context (no state forked from the parent); the kernel hands each new connection to
one of them. Each worker is exactly the single-process server (``server.run``) built from the same settings,
except that onnxruntime's and the tokenizer's threads default to the worker's share of the cores
(:func:`worker_settings`).

Signals to the parent:

- SIGTERM: forwarded to every worker; each drains as a single server does (``server.py``), and the parent exits
  once all have (any still running after the drain bound plus :data:`EXIT_GRACE_S` are killed).
- SIGINT: forwarded (each worker's fast shutdown).
- SIGHUP: forwarded; each worker reloads the repository's CURRENT, as ``POST /admin/reload`` without a body does.
  That endpoint, answered by one worker, sends the parent this signal so every worker follows.

Each worker leaves the parent's process group (a signal to the group, Ctrl-C in a terminal, reaches it once,
through the parent) and drains and stops by itself if the parent dies without stopping it (SIGKILL).

A worker that exits while the parent is not stopping is started again, unless it failed before it ever served
(uvicorn's startup-failure exit code 3: a model that does not verify, a bad setting), which every restart would
repeat: then the parent stops the others and exits with that code. More than :data:`MAX_RESTARTS` restarts
within :data:`RESTART_WINDOW_S` stop the server the same way (exit code 1).

Metrics: Prometheus's multiprocess mode. The parent creates an empty directory and hands it to the workers as
``PROMETHEUS_MULTIPROC_DIR`` before they import ``prometheus_client``; ``/metrics``, whichever worker answers it,
reports every worker's counters and histograms summed and the gauges as :class:`mipic.service.metrics.Metrics`
declares them (queue depth summed over live workers, readiness their minimum). A worker's files are marked dead
when it exits; the directory is removed when the parent exits.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections import deque
from multiprocessing.context import SpawnProcess
from types import FrameType

import uvicorn
from uvicorn.config import STARTUP_FAILURE

from mipic.logs import logging_config, setup_logging
from mipic.service.metrics import MULTIPROC_ENV
from mipic.service.settings import Settings

logger = logging.getLogger(__name__)

#: What the parent waits beyond a worker's own bound (drain + shutdown margin) before killing it.
EXIT_GRACE_S = 5.0
#: Restarts of crashed workers allowed within :data:`RESTART_WINDOW_S` before the server gives up.
MAX_RESTARTS = 5
RESTART_WINDOW_S = 60.0

multiprocessing.allow_connection_pickling()  # sockets travel to spawned workers


def worker_settings(settings: Settings, cpus: int | None = None) -> Settings:
    """The settings one of ``settings.workers`` workers runs with: ``intra_op_threads`` 0 (all cores) becomes the
    worker's share of the cores (at least one), and so does an unset ``tokenizer_threads`` at most; a positive
    ``intra_op_threads`` or a set ``tokenizer_threads`` is each worker's own."""
    n = settings.workers
    if n <= 1:
        return settings
    share = max(1, (cpus or os.cpu_count() or 1) // n)
    update: dict[str, int] = {}
    if settings.intra_op_threads == 0:
        update["intra_op_threads"] = share
    if "tokenizer_threads" not in settings.model_fields_set:
        update["tokenizer_threads"] = min(settings.tokenizer_threads, share)
    return settings.model_copy(update=update)


def _worker(settings: Settings, sock: socket.socket) -> None:  # pragma: no cover - runs in a spawned process
    """One worker: the single-process server on the parent's socket. It leaves the parent's process group, so a
    signal to the group (Ctrl-C in a terminal) reaches it once, forwarded by the parent, not twice (a second
    SIGTERM or SIGINT skips the drain), and it stops (draining) if the parent dies without stopping it."""
    from mipic.service.app import create_app
    from mipic.service.server import run

    os.setpgrp()
    parent = os.getppid()
    threading.Thread(target=_stop_when_orphaned, args=(parent,), name="mipic-parent-watch", daemon=True).start()
    setup_logging(settings.log_level, settings.log_format)
    app = create_app(settings)
    app.state.supervisor_pid = parent
    run(app, settings, sockets=[sock])


def _stop_when_orphaned(parent: int, interval_s: float = 1.0) -> None:  # pragma: no cover - in a worker
    """SIGTERM this worker (a drain) once its parent is gone (killed with SIGKILL, say): nothing else would
    stop it, and it would keep serving on the socket."""
    while os.getppid() == parent:
        time.sleep(interval_s)
    logger.warning("the supervisor (pid %d) is gone: stopping this worker", parent)
    os.kill(os.getpid(), signal.SIGTERM)


class Supervisor:
    """Start ``settings.workers`` workers on one socket, keep them running, stop them on a signal."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.child_settings = worker_settings(settings)
        self._ctx = multiprocessing.get_context("spawn")
        self._workers: list[SpawnProcess] = []
        self._stopping: int | None = None  # the signal that stops the server
        self._pending: deque[int] = deque()  # signals received, handled by the loop
        self._restarts: deque[float] = deque()
        self._metrics_dir: str | None = None

    # ------------------------------------------------------------------ lifecycle

    def run(self) -> int:
        """Serve until stopped; returns the process exit code."""
        sock = uvicorn.Config("mipic.service.app:create_app", host=self.settings.host, port=self.settings.port,
                              log_config=logging_config(self.settings.log_level, self.settings.log_format),
                              log_level=self.settings.log_level).bind_socket()
        self._metrics_dir = tempfile.mkdtemp(prefix="mipic-metrics-")
        os.environ[MULTIPROC_ENV] = self._metrics_dir
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
        code = 0
        try:
            logger.info("starting %d workers on %s:%d (%d onnxruntime threads each)", self.settings.workers,
                        self.settings.host, self.settings.port, self.child_settings.intra_op_threads)
            self._workers = [self._start(sock) for _ in range(self.settings.workers)]
            code = self._loop(sock)
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            self._stop_all()
            sock.close()
            os.environ.pop(MULTIPROC_ENV, None)
            shutil.rmtree(self._metrics_dir, ignore_errors=True)
        return code

    def _start(self, sock: socket.socket) -> SpawnProcess:
        """A new worker. It is started with SIGHUP ignored (a disposition that survives exec) until its server
        installs its reload handler: a reload broadcast while it loads must not kill it (it loads CURRENT anyway)."""
        proc = self._ctx.Process(target=_worker, args=(self.child_settings, sock), name="mipic-worker", daemon=False)
        handler = signal.signal(signal.SIGHUP, signal.SIG_IGN)
        try:
            proc.start()
        finally:
            signal.signal(signal.SIGHUP, handler)
        return proc

    def _on_signal(self, sig: int, frame: FrameType | None) -> None:
        self._pending.append(sig)

    def _loop(self, sock: socket.socket) -> int:
        while True:
            while self._pending:
                sig = self._pending.popleft()
                if sig == signal.SIGHUP:
                    logger.info("SIGHUP: every worker reloads the repository's CURRENT")
                else:
                    self._stopping = self._stopping or sig
                self._signal_all(sig)
            if self._stopping is not None:
                return 0
            ready = multiprocessing.connection.wait([p.sentinel for p in self._workers], timeout=0.2)
            if not ready or self._pending:
                continue
            for i, proc in enumerate(self._workers):
                if proc.exitcode is None:
                    continue
                self._mark_dead(proc)
                if proc.exitcode == STARTUP_FAILURE:
                    logger.error("worker %s failed to start (exit code %d): stopping", proc.pid, proc.exitcode)
                    return STARTUP_FAILURE
                now = time.monotonic()
                while self._restarts and now - self._restarts[0] > RESTART_WINDOW_S:
                    self._restarts.popleft()
                if len(self._restarts) >= MAX_RESTARTS:
                    logger.error("%d workers died within %.0f s: stopping", MAX_RESTARTS + 1, RESTART_WINDOW_S)
                    return 1
                self._restarts.append(now)
                logger.warning("worker %s exited (code %s); starting another", proc.pid, proc.exitcode)
                self._workers[i] = self._start(sock)

    def _signal_all(self, sig: int) -> None:
        for proc in self._workers:
            if proc.exitcode is None and proc.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, sig)

    def _stop_all(self) -> None:
        """Every worker gone: those still running get SIGTERM (if not stopping already) and the drain's time."""
        if self._stopping is None:
            self._signal_all(signal.SIGTERM)
        from mipic.service.server import SHUTDOWN_MARGIN_S

        deadline = time.monotonic() + self.settings.drain_timeout_s + SHUTDOWN_MARGIN_S + EXIT_GRACE_S
        for proc in self._workers:
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.exitcode is None:
                logger.error("worker %s still running past the drain bound: killing it", proc.pid)
                proc.kill()
                proc.join(5)
            self._mark_dead(proc)

    def _mark_dead(self, proc: SpawnProcess) -> None:
        if proc.pid is None or self._metrics_dir is None:
            return
        from prometheus_client import multiprocess

        with contextlib.suppress(OSError):
            multiprocess.mark_process_dead(proc.pid, self._metrics_dir)


def supervise(settings: Settings) -> int:
    """Run ``settings.workers`` server processes on one port until stopped; the exit code."""
    return Supervisor(settings).run()
