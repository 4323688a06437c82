"""Start and stop the servers under test as child processes on loopback: mipic and the Infinity peer."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from bench.common import TMP_DIR


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(proc: subprocess.Popen[bytes], url: str, timeout_s: float, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text()[-3000:] if log and log.is_file() else ""
            raise RuntimeError(f"server exited during start (rc={proc.returncode}):\n{tail}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    stop(proc)
    raise RuntimeError(f"server not ready at {url} in {timeout_s:.0f} s")


def stop(proc: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def start_server(model: Path, port: int, extra_env: dict[str, str] | None = None,
                 log: Path | None = None, module: str = "mipic.cli") -> subprocess.Popen[bytes]:
    """``mipic serve`` on 127.0.0.1:port; returns once ``/ready`` answers 200 (model verified and warmed)."""
    env = {**os.environ, "MIPIC_BOOTSTRAP_DEFAULT": "false", "MIPIC_MAX_QUEUE_SIZE": "100000",
           "MIPIC_WATCH_INTERVAL_S": "0", **(extra_env or {})}
    out = log.open("wb") if log else subprocess.DEVNULL
    proc = subprocess.Popen(
        [sys.executable, "-m", module, "serve", "--host", "127.0.0.1", "--port", str(port),
         "--model", str(model), "--log-level", "warning"],
        env=env, stdout=out, stderr=subprocess.STDOUT,
    )
    wait_ready(proc, f"http://127.0.0.1:{port}/ready", 120, log)
    return proc


@contextlib.contextmanager
def mipic_server(model: Path, extra_env: dict[str, str] | None = None) -> Iterator[tuple[str, int]]:
    """(base URL, pid) of a running mipic server, stopped on exit."""
    port = free_port()
    TMP_DIR.mkdir(parents=True, exist_ok=True)
    proc = start_server(model, port, extra_env, TMP_DIR / "mipic-server.log")
    try:
        yield f"http://127.0.0.1:{port}", proc.pid
    finally:
        stop(proc)


INFINITY_MODEL_NAME = "minilm"


def infinity_command(port: int, batch_size: int = 32) -> list[str]:
    # `--model-id .` with the model directory as working directory: 0.0.78 passes the ONNX file's full path
    # as Optimum's `file_name` for an absolute local path and fails with "Could not find any ONNX files".
    # `--pooling-method mean`: with "auto" the optimum engine pools the CLS token, which is not this model.
    from bench.prepare import peers_python

    return [str(peers_python()), "-m", "infinity_emb.cli", "v2", "--model-id", ".",
            "--served-model-name", INFINITY_MODEL_NAME, "--engine", "optimum", "--device", "cpu",
            "--pooling-method", "mean", "--batch-size", str(batch_size), "--no-vector-disk-cache",
            "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]


@contextlib.contextmanager
def infinity_server(model_dir: Path, batch_size: int = 32) -> Iterator[tuple[str, int]]:
    """Infinity (from the peers venv) serving an Optimum ONNX export; (base URL, pid), stopped on exit."""
    from bench.prepare import peers_python

    if not peers_python().is_file():
        raise RuntimeError(f"no peers venv python at {peers_python()} (bench.prepare builds it)")
    port = free_port()
    hf_home = TMP_DIR / "hf-home"  # Infinity writes its optimised-model cache under HF_HOME
    hf_home.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(hf_home), "INFINITY_ANONYMOUS_USAGE_STATS": "0",
           "DO_NOT_TRACK": "1"}
    env.pop("VIRTUAL_ENV", None)
    log = TMP_DIR / "infinity-server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(infinity_command(port, batch_size), cwd=model_dir, env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    wait_ready(proc, f"http://127.0.0.1:{port}/models", 300, log)
    try:
        yield f"http://127.0.0.1:{port}", proc.pid
    finally:
        stop(proc)
