"""``mipic serve --workers 2``, run for real: two worker processes on one port, /metrics summed over them (the dead
ones' counts included), a crashed worker replaced, a reload reaching every worker, SIGTERM stopping all of them,
and a model that fails to load stopping the server with uvicorn's startup-failure code."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest
from tests.conftest import free_port

from mipic.modeldir.repository import ModelRepository
from mipic.service.server import SHUTDOWN_MARGIN_S
from mipic.service.settings import Settings
from mipic.service.workers import worker_settings

pytestmark = pytest.mark.integration
TOKEN = "s3cret-admin"


def _serve(model: Path, port: int, **env: str) -> subprocess.Popen[str]:
    full_env = {**os.environ, "MIPIC_BOOTSTRAP_DEFAULT": "false", "MIPIC_WATCH_INTERVAL_S": "0",
                "MIPIC_ADMIN_TOKEN": TOKEN, "MIPIC_DRAIN_TIMEOUT_S": "5", **env}
    return subprocess.Popen([sys.executable, "-m", "mipic.cli", "serve", "--port", str(port), "--model", str(model),
                             "--workers", "2", "--log-level", "info", "--log-format", "json"],
                            env=full_env, stderr=subprocess.PIPE, text=True)


def _workers(proc: subprocess.Popen[str]) -> list[int]:
    """The server's live worker processes (its spawned children, not multiprocessing's resource tracker; not a
    killed one the parent has yet to reap)."""
    pids = []
    for child in psutil.Process(proc.pid).children():
        try:
            if "spawn_main" in " ".join(child.cmdline()):
                pids.append(child.pid)
        except psutil.Error:  # gone, or a zombie
            continue
    return sorted(pids)


def _wait(cond, what: str, proc: subprocess.Popen[str], timeout: float = 90) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        assert proc.poll() is None, f"server exited while waiting for {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _ready(url: str) -> bool:
    try:
        return httpx.get(url + "/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _embed_version(url: str) -> str:
    """One request on a new connection (so the kernel may hand it to either worker): the version that answered."""
    r = httpx.post(url + "/embed?dim=16&layer=2", json={"inputs": ["the quick brown fox"]}, timeout=30)
    assert r.status_code == 200, r.text
    return str(r.json()["model"])


def _embed_200s(url: str) -> float:
    text = httpx.get(url + "/metrics", timeout=10).text
    line = next(ln for ln in text.splitlines() if ln.startswith('mipic_requests_total{endpoint="/embed",status="200"}'))
    return float(line.rsplit(" ", 1)[1])


def _model_info(url: str) -> dict[str, float]:
    """mipic_model_info by version, as a scrape reports it."""
    text = httpx.get(url + "/metrics", timeout=10).text
    out = {}
    for ln in text.splitlines():
        if ln.startswith("mipic_model_info{"):
            version = ln.split('model_version="', 1)[1].split('"', 1)[0]
            out[version] = float(ln.rsplit(" ", 1)[1])
    return out


@pytest.fixture
def repo(tmp_path: Path, tiny_model_dir: Path, tiny_model_v2_dir: Path) -> ModelRepository:
    r = ModelRepository(tmp_path / "tiny")
    r.register(tiny_model_dir)
    r.register(tiny_model_v2_dir)
    r.promote("1")
    return r


def test_two_workers_share_the_port_metrics_restarts_reload_and_stop(repo: ModelRepository) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = _serve(repo.path, port)
    try:
        _wait(lambda: len(_workers(proc)) == 2 and _ready(url), "two workers", proc)
        first = _workers(proc)
        assert {_embed_version(url) for _ in range(20)} == {"tiny@1"}
        assert _embed_200s(url) == 20

        # kill both original workers: their replacements have served nothing, so a scrape can only show 20 by
        # reading the dead workers' files
        for pid in first:
            os.kill(pid, signal.SIGKILL)
            _wait(lambda p=pid: p not in _workers(proc) and len(_workers(proc)) == 2, "a replacement", proc)
        _wait(lambda: _ready(url), "replacements ready", proc)
        assert not set(_workers(proc)) & set(first)
        assert _embed_200s(url) == 20
        # mipic_ready is the minimum over live workers: 1 once both replacements have loaded and warmed
        _wait(lambda: "\nmipic_ready 1.0" in httpx.get(url + "/metrics", timeout=10).text, "both ready", proc)

        # a reload answered by one worker reaches the other through the parent (watching CURRENT is off here)
        repo.promote("2")
        r = httpx.post(url + "/admin/reload", headers={"authorization": f"Bearer {TOKEN}"}, timeout=60)
        assert r.status_code == 200 and r.json()["model"] == "tiny@2", r.text
        # mipic_model_info is the maximum over live workers: version 1 reads 0 only once every worker has left it
        _wait(lambda: _model_info(url) == {"1": 0.0, "2": 1.0}, "every worker on version 2", proc, timeout=30)
        assert {_embed_version(url) for _ in range(10)} == {"tiny@2"}
        # a reload to a path cannot reach the other workers: refused, naming the field
        r = httpx.post(url + "/admin/reload", headers={"authorization": f"Bearer {TOKEN}"},
                       json={"model_dir": str(repo.path / "1")}, timeout=30)
        assert r.status_code == 409
        assert r.json()["error"]["code"] == "needs_single_worker" and r.json()["error"]["param"] == "model_dir"

        workers = _workers(proc)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert time.monotonic() - t0 <= 5 + SHUTDOWN_MARGIN_S + 5
        assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in workers)
        stderr = proc.stderr.read() if proc.stderr else ""
        lines = [ln for ln in stderr.splitlines() if ln.strip()]
        assert [ln for ln in lines if not ln.startswith("{")] == []
        records = [json.loads(ln) for ln in lines]  # every line JSON
        assert "Traceback" not in stderr
        assert sum(str(r["message"]).startswith("drain complete") for r in records) == 2
        assert any("exited" in str(r["message"]) and "starting another" in str(r["message"]) for r in records)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_a_model_that_fails_to_load_stops_every_worker(tmp_path: Path, tiny_model_dir: Path) -> None:
    bad = tmp_path / "tiny" / "1"
    shutil.copytree(tiny_model_dir, bad)
    layer = bad / "layer_02.onnx"
    layer.write_bytes(layer.read_bytes()[:-64])  # checksum mismatch: refused at load, in every worker
    proc = _serve(bad, free_port())
    try:
        assert proc.wait(timeout=120) == 3  # uvicorn's startup-failure code, not a restart loop
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    stderr = proc.stderr.read() if proc.stderr else ""
    assert "failed to start" in stderr


def test_worker_settings_split_the_cores_unless_set(tmp_path: Path) -> None:
    s = worker_settings(Settings(model_dir=tmp_path, workers=2), cpus=8)
    assert (s.intra_op_threads, s.tokenizer_threads, s.workers) == (4, 2, 2)
    s = worker_settings(Settings(model_dir=tmp_path, workers=4), cpus=2)
    assert (s.intra_op_threads, s.tokenizer_threads) == (1, 1)
    s = worker_settings(Settings(model_dir=tmp_path, workers=2, intra_op_threads=3, tokenizer_threads=4), cpus=2)
    assert (s.intra_op_threads, s.tokenizer_threads) == (3, 4)  # positive: each worker's own
    s = worker_settings(Settings(model_dir=tmp_path, workers=2, intra_op_threads=0), cpus=4)
    assert s.intra_op_threads == 2  # 0 means all cores, whether set or left: split
    one = Settings(model_dir=tmp_path)
    assert worker_settings(one, cpus=8) is one


def test_sighup_reloads_current_in_a_single_process_server(repo: ModelRepository) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "MIPIC_BOOTSTRAP_DEFAULT": "false", "MIPIC_WATCH_INTERVAL_S": "0"}
    proc = subprocess.Popen([sys.executable, "-m", "mipic.cli", "serve", "--port", str(port), "--model",
                             str(repo.path), "--log-level", "info"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        _wait(lambda: _ready(url), "ready", proc)
        assert _embed_version(url) == "tiny@1"
        repo.promote("2")
        time.sleep(0.5)
        assert _embed_version(url) == "tiny@1"  # the watcher is off: nothing switches by itself
        proc.send_signal(signal.SIGHUP)
        _wait(lambda: _embed_version(url) == "tiny@2", "version 2 after SIGHUP", proc, timeout=30)
        assert _model_info(url) == {"2": 1.0}  # one process: the old series is removed, not left at 0
    finally:
        proc.terminate()
        proc.wait(30)
    assert "SIGHUP reload: serving tiny@2" in (proc.stderr.read() if proc.stderr else "")


def test_workers_stop_when_their_parent_is_killed(tiny_model_dir: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = _serve(tiny_model_dir, port)
    try:
        _wait(lambda: len(_workers(proc)) == 2 and _ready(url), "two workers", proc)
        workers = [psutil.Process(p) for p in _workers(proc)]
        proc.kill()  # SIGKILL: the parent cannot forward anything
        proc.wait(10)
        _gone, alive = psutil.wait_procs(workers, timeout=5 + SHUTDOWN_MARGIN_S + 5)
        assert alive == [], "orphaned workers kept running"
        with pytest.raises(httpx.HTTPError):
            httpx.get(url + "/ready", timeout=2)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
