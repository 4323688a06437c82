"""``mipic_errors_total{endpoint, code}`` counts every error response exactly once, for every error code the
app can answer (the HTTP protocol's own codes are counted in tests/reliability/test_http_limits.py)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from tests.conftest import make_settings

from mipic.modeldir.repository import ModelRepository
from mipic.service.app import create_app

Action = Callable[[TestClient, FastAPI, Path], httpx.Response]
ADMIN = {"authorization": "Bearer adm"}


def _post(path: str, body: Any = None, **kw: Any) -> Action:
    return lambda c, app, tmp: c.post(path, json=body, **kw)


def _rejected_model(c: TestClient, app: FastAPI, tmp: Path) -> httpx.Response:
    bad = tmp / "bad" / "1"
    shutil.copytree(app.state.engine.model.model_dir, bad)
    (bad / "layer_02.onnx").write_bytes(b"broken")
    return c.post("/admin/reload", json={"model_dir": str(bad)}, headers=ADMIN)


def _bad_pointer(c: TestClient, app: FastAPI, tmp: Path) -> httpx.Response:
    repo = ModelRepository(tmp / "repo")
    repo.register(app.state.engine.model.model_dir)
    repo.promote("1")
    assert c.post("/admin/reload", json={"model_dir": str(repo.path)}, headers=ADMIN).status_code == 200
    (repo.path / "CURRENT").write_text("")
    return c.post("/admin/reload", headers=ADMIN)


def _draining(c: TestClient, app: FastAPI, tmp: Path) -> httpx.Response:
    app.state.engine.draining = True
    return c.post("/embed", json={"inputs": "x"})


def _not_ready(c: TestClient, app: FastAPI, tmp: Path) -> httpx.Response:
    app.state.engine.ready = False
    return c.get("/ready")


def _inference_failed(c: TestClient, app: FastAPI, tmp: Path) -> httpx.Response:
    def boom(rows: object, more: bool = False) -> None:
        raise RuntimeError("no")

    app.state.engine.model.run = boom
    return c.post("/embed", json={"inputs": "x"})


def _overloaded(c: TestClient, app: FastAPI, tmp: Path) -> httpx.Response:
    # Settings refuse a queue smaller than one request; the batcher's own bound is what answers 429.
    app.state.engine.batcher.max_queue_size = 1
    return c.post("/embed", json={"inputs": ["a", "b"]})


def _internal(c: TestClient, app: FastAPI, tmp: Path) -> httpx.Response:
    async def boom(*a: object, **k: object) -> None:
        raise RuntimeError("a bug")

    app.state.engine.embed = boom
    return c.post("/v1/embeddings", json={"input": "x"})


# (code, endpoint label, settings overrides, how to provoke it)
CASES: list[tuple[str, str, dict[str, Any], Action]] = [
    ("invalid_budget", "/embed", {}, _post("/embed?dim=12", {"inputs": "x"})),
    ("invalid_request", "/embed", {}, _post("/embed", {"inputs": []})),
    ("input_too_long", "/embed", {"truncate": False}, _post("/embed", {"inputs": "the cat " * 100})),
    ("invalid_value", "/embed", {}, _post("/embed", {"inputs": "x", "layer": True})),
    ("invalid_json", "/embed", {}, lambda c, a, t: c.post("/embed", content=b"{nope",
                                                          headers={"content-type": "application/json"})),
    ("conflict", "/embed", {}, _post("/embed?dim=8", {"inputs": "x", "dim": 16})),
    ("unsupported_media_type", "/embed", {}, lambda c, a, t: c.post("/embed", content=b"x",
                                                                    headers={"content-type": "text/plain"})),
    ("request_too_large", "/embed", {"max_request_bytes": 1000}, _post("/embed", {"inputs": "x" * 2000})),
    ("not_found", "other", {}, lambda c, a, t: c.get("/no/such/route")),
    ("method_not_allowed", "/embed", {}, lambda c, a, t: c.get("/embed")),
    ("model_not_found", "/v1/embeddings", {}, _post("/v1/embeddings", {"input": "x", "model": "gpt-9"})),
    ("invalid_api_key", "/v1/embeddings", {"api_key": "k"}, _post("/v1/embeddings", {"input": "x"})),
    ("missing_token", "/admin/reload", {}, _post("/admin/reload")),
    ("admin_disabled", "/admin/reload", {}, _post("/admin/reload", headers={"authorization": "Bearer x"})),
    ("invalid_token", "/admin/reload", {"admin_token": "adm"},
     _post("/admin/reload", headers={"authorization": "Bearer wrong"})),
    ("model_rejected", "/admin/reload", {"admin_token": "adm"}, _rejected_model),
    ("invalid_pointer", "/admin/reload", {"admin_token": "adm"}, _bad_pointer),
    ("overloaded", "/embed", {}, _overloaded),
    ("not_ready", "/ready", {}, _not_ready),
    ("draining", "/embed", {}, _draining),
    ("deadline_exceeded", "/embed", {"request_timeout_ms": 0.001, "max_wait_ms": 5}, _post("/embed", {"inputs": "x"})),
    ("inference_failed", "/embed", {}, _inference_failed),
    ("internal_error", "/v1/embeddings", {}, _internal),
]


def _total(app: FastAPI) -> float:
    return sum(s.value for m in app.state.metrics.errors.collect() for s in m.samples if s.name.endswith("_total"))


@pytest.mark.parametrize(("code", "endpoint", "overrides", "action"), CASES, ids=[c[0] for c in CASES])
def test_each_error_response_is_counted_once(code: str, endpoint: str, overrides: dict[str, Any], action: Action,
                                             tiny_model_dir: Path, tmp_path: Path) -> None:
    app = create_app(make_settings(tiny_model_dir, **overrides))
    with TestClient(app, raise_server_exceptions=False) as client:
        before = _total(app)
        r = action(client, app, tmp_path)
        assert r.status_code >= 400 and r.json()["error"]["code"] == code, r.text
        value = app.state.metrics.registry.get_sample_value("mipic_errors_total", {"endpoint": endpoint, "code": code})
        assert value == 1.0
        assert _total(app) == before + 1, "counted exactly once"
        assert f'mipic_errors_total{{code="{code}",endpoint="{endpoint}"}} 1.0' in client.get("/metrics").text
