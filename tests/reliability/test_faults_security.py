"""Faults (bad model, worker exception mid-batch, client disconnect) and security defaults."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from mipic.service.app import create_app
from mipic.service.settings import Settings


def _settings(model_dir: Path, **kw: object) -> Settings:
    return Settings(model_dir=model_dir, provider="cpu", bootstrap_default=False, **kw)  # type: ignore[arg-type]


def test_a_model_that_fails_to_load_stops_startup_with_a_clear_line(tiny_model_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "tiny" / "1"
    shutil.copytree(tiny_model_dir, bad)
    (bad / "layer_03.onnx").write_bytes(b"not an onnx graph")
    proc = subprocess.run(
        [sys.executable, "-m", "mipic.cli", "serve", "--model", str(bad), "--port", "0"],
        capture_output=True, text=True, timeout=120, env={**os.environ, "MIPIC_BOOTSTRAP_DEFAULT": "false"},
    )
    assert proc.returncode != 0
    assert "checksum mismatch for layer_03.onnx" in proc.stderr
    assert "Traceback" not in proc.stderr.split("refusing model")[0]


def test_worker_exception_fails_only_that_batch(tiny_model_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    app = create_app(_settings(tiny_model_dir))
    with TestClient(app) as client:
        model = app.state.engine.model
        real = model.run
        calls = {"n": 0}

        def flaky(rows, more=False):  # type: ignore[no-untyped-def]
            calls["n"] += 1
            if calls["n"] == 1:
                raise RuntimeError("CUDA error at /secret/internal/path.cu:42")
            return real(rows, more=more)

        model.run = flaky
        with caplog.at_level(logging.ERROR):
            r = client.post("/embed", json={"inputs": ["a cat"]})
        assert r.status_code == 500
        assert r.json()["error"] == {"message": "internal error running the model", "type": "server_error",
                                     "param": None, "code": "inference_failed"}
        assert "secret" not in r.text
        assert any("batch of 1 rows failed" in rec.getMessage() for rec in caplog.records)
        assert client.post("/embed", json={"inputs": ["a cat"]}).status_code == 200
        assert 'mipic_requests_total{endpoint="/embed",status="500"} 1.0' in client.get("/metrics").text


def test_client_disconnect_mid_request_is_dropped(tiny_model_dir: Path, live_server_factory) -> None:  # type: ignore[no-untyped-def]
    import threading

    app = create_app(_settings(tiny_model_dir, max_wait_ms=0))
    srv = live_server_factory(app)
    model = app.state.engine.model
    gate, entered, ran = threading.Event(), threading.Event(), []
    real = model.run

    def slow(rows, more=False):  # type: ignore[no-untyped-def]
        entered.set()
        gate.wait(timeout=10)
        ran.append(len(rows))
        return real(rows, more=more)

    model.run = slow
    blocker = threading.Thread(target=lambda: httpx.post(srv.url + "/embed", json={"inputs": ["the cat"]}, timeout=30))
    blocker.start()
    assert entered.wait(timeout=10)  # the blocker's batch is running; the next request waits in the queue
    body = json.dumps({"inputs": ["a dog", "the fox", "a cat"]}).encode()
    with socket.create_connection(("127.0.0.1", srv.port)) as s:
        s.sendall(b"POST /embed HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        time.sleep(0.3)
    # connection closed before the answer; let the blocker finish
    time.sleep(0.3)
    gate.set()
    blocker.join(timeout=30)
    time.sleep(0.3)
    assert ran == [1]  # the abandoned request's three rows never reached the model
    metrics = httpx.get(srv.url + "/metrics").text
    assert 'mipic_requests_total{endpoint="/embed",status="499"} 1.0' in metrics
    assert httpx.post(srv.url + "/embed", json={"inputs": "alive"}).status_code == 200


def test_api_key_cors_and_secrets(tiny_model_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    key = "sk-test-1234567890"
    with caplog.at_level(logging.DEBUG), TestClient(create_app(_settings(tiny_model_dir, api_key=key))) as client:
        r = client.post("/embed", json={"inputs": "x"})
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        r = client.post("/embed", json={"inputs": "x"}, headers={"authorization": "Bearer wrong"})
        assert r.status_code == 401
        assert client.post("/v1/embeddings", json={"input": "x"}).status_code == 401
        ok = client.post("/embed", json={"inputs": "x"}, headers={"authorization": f"Bearer {key}"})
        assert ok.status_code == 200
        assert client.get("/health").status_code == 200  # probes stay open
        # CORS is off by default: no allow-origin header, preflight not answered as CORS
        r = client.options("/embed", headers={"origin": "https://evil.example", "access-control-request-method": "POST"})
        assert "access-control-allow-origin" not in r.headers
        assert key not in client.get("/info").text
    assert all(key not in rec.getMessage() for rec in caplog.records)


def test_cors_when_configured(tiny_model_dir: Path) -> None:
    s = _settings(tiny_model_dir, cors_origins=["https://app.example"])
    with TestClient(create_app(s)) as client:
        r = client.post("/embed", json={"inputs": "x"}, headers={"origin": "https://app.example"})
        assert r.headers["access-control-allow-origin"] == "https://app.example"
