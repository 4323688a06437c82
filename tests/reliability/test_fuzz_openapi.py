"""Property-based fuzzing of the HTTP API from its own OpenAPI schema (schemathesis) and of request
parsing (hypothesis): no input may produce a 5xx, every error is an OpenAI-style JSON body."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mipic.service.app import create_app
from mipic.service.settings import Settings

schemathesis = pytest.importorskip("schemathesis")


def _settings(model_dir: Path) -> Settings:
    return Settings(model_dir=model_dir, provider="cpu", bootstrap_default=False,  # type: ignore[arg-type]
                    max_inputs_per_request=16, max_request_bytes=200_000, admin_token="t0ken")


@pytest.fixture(scope="module")
def client(tiny_model_dir: Path) -> Iterator[TestClient]:
    with TestClient(create_app(_settings(tiny_model_dir)), raise_server_exceptions=False) as c:
        yield c


def _assert_sane(status: int, body: bytes, content_type: str) -> None:
    assert status < 500, body[:300]
    if status >= 400:
        assert content_type.startswith("application/json")
        err = json.loads(body)["error"]
        assert set(err) == {"message", "type", "param", "code"}
        assert "Traceback" not in err["message"] and "/work" not in err["message"]


def test_openapi_fuzz_never_5xx(client: TestClient) -> None:
    """Every operation in /openapi.json, with schemathesis-generated (valid and invalid) inputs."""
    schema = schemathesis.openapi.from_dict(client.get("/openapi.json").json())
    failures: list[str] = []
    n = 0
    for op_result in schema.get_all_operations():
        operation = op_result.ok()
        run = _fuzz_one(client, operation.as_strategy(), f"{operation.method} {operation.path}", failures)
        run()
        n += run.count  # type: ignore[attr-defined]
    assert not failures, failures[:5]
    assert n > 100


def _fuzz_one(client: TestClient, strategy, label: str, failures: list[str]):  # type: ignore[no-untyped-def]
    @settings(max_examples=40, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(case=strategy)
    def run(case) -> None:  # type: ignore[no-untyped-def]
        kwargs = case.as_transport_kwargs(base_url="http://testserver")
        r = client.request(kwargs["method"], kwargs["url"], headers=kwargs.get("headers"),
                           params=kwargs.get("params"), json=kwargs.get("json"),
                           content=kwargs.get("data") if isinstance(kwargs.get("data"), bytes) else None)
        run.count += 1  # type: ignore[attr-defined]
        if r.status_code >= 500:
            failures.append(f"{label}: {r.status_code} {r.text[:200]}")
        _assert_sane(r.status_code, r.content, r.headers.get("content-type", ""))

    run.count = 0  # type: ignore[attr-defined]
    return run


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=150, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(body=st.fixed_dictionaries({"inputs": JSONISH}, optional={"dim": JSONISH, "layer": JSONISH,
                                                                   "extra": JSONISH}))
def test_embed_body_fuzz(client: TestClient, body: dict[str, object]) -> None:
    r = client.post("/embed", content=json.dumps(body, allow_nan=True), headers={"content-type": "application/json"})
    _assert_sane(r.status_code, r.content, r.headers.get("content-type", ""))


@settings(max_examples=100, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(raw=st.binary(max_size=2000), dim=st.integers(min_value=-(2**70), max_value=2**70),
       layer=st.integers(min_value=-(2**70), max_value=2**70))
def test_raw_bytes_and_extreme_query_params(client: TestClient, raw: bytes, dim: int, layer: int) -> None:
    r = client.post(f"/embed?dim={dim}&layer={layer}", content=raw, headers={"content-type": "application/json"})
    _assert_sane(r.status_code, r.content, r.headers.get("content-type", ""))


@pytest.mark.parametrize(
    ("payload", "status"),
    [
        (b'{"inputs": "\xff\xfe invalid utf-8"}', 400),
        (b'{"inputs": "x", "dim": NaN}', 400),
        (b'{"inputs": "x", "layer": Infinity}', 400),
        (b'{"inputs": "x", "dim": 1e308}', 400),
        (b"[" * 50_000 + b"]" * 50_000, 400),  # deeply nested JSON
        (json.dumps({"inputs": "\U0001f600\u200b\u202e\u0000" * 500}).encode(), 200),  # emoji, ZWSP, RTL, NUL
        (json.dumps({"inputs": ["ok", "lone \ud800 surrogate"]}).encode(), 400),
        (b'{"inputs": ["' + b"a" * 150_000 + b'"]}', 200),  # one huge string: truncated to max length
        (b'{"inputs": [' + b'"a",' * 30_000 + b'"a"]}', 400),  # huge list
        (b'{"inputs": "' + b"a" * 300_000 + b'"}', 413),
    ],
)
def test_hostile_payloads(client: TestClient, payload: bytes, status: int) -> None:
    r = client.post("/embed", content=payload, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text[:300]
    _assert_sane(r.status_code, r.content, r.headers.get("content-type", ""))
    assert client.post("/embed", json={"inputs": "still alive"}).status_code == 200
