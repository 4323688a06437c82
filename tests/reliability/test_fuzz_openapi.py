"""Property-based fuzzing of the HTTP API from its own OpenAPI schema (schemathesis) and of request
parsing (hypothesis): no input may produce a 5xx, every error is a JSON body in its surface's shape
(text-embeddings-inference's under /tei, OpenAI's elsewhere)."""

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


def _assert_sane(status: int, body: bytes, content_type: str, path: str = "/embed") -> None:
    assert status < 500, body[:300]
    if status >= 400:
        assert content_type.startswith("application/json")
        payload = json.loads(body)
        if path == "/tei" or path.startswith("/tei/"):
            assert set(payload) == {"error", "error_type"}
            assert payload["error_type"] in {"Validation", "Empty", "Overloaded", "Unhealthy", "Tokenizer"}
            message = payload["error"]
        else:
            assert set(payload["error"]) == {"message", "type", "param", "code"}
            message = payload["error"]["message"]
        assert "Traceback" not in message and "/work" not in message


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
    paths = {op.ok().path for op in schema.get_all_operations()}
    assert {"/tei", "/tei/embed", "/tei/tokenize", "/tei/decode", "/tei/info", "/v1/models/{model_id}"} <= paths
    assert n > 300


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
        _assert_sane(r.status_code, r.content, r.headers.get("content-type", ""), r.request.url.path)

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


TOKEN_IDS = st.lists(st.integers(min_value=-(2**40), max_value=2**40), max_size=6)


@settings(max_examples=150, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(path=st.sampled_from(["/tei", "/tei/embed"]),
       body=st.fixed_dictionaries(
           {"inputs": JSONISH | TOKEN_IDS | st.lists(st.text(max_size=20) | TOKEN_IDS, max_size=4)},
           optional={"truncate": JSONISH, "truncation_direction": st.sampled_from(["Left", "right", "Up"]) | JSONISH,
                     "normalize": JSONISH, "prompt_name": JSONISH, "dimensions": JSONISH, "dim": JSONISH,
                     "layer": JSONISH}))
def test_tei_embed_body_fuzz(client: TestClient, path: str, body: dict[str, object]) -> None:
    r = client.post(path, content=json.dumps(body, allow_nan=True), headers={"content-type": "application/json"})
    _assert_sane(r.status_code, r.content, r.headers.get("content-type", ""), path)


@settings(max_examples=100, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(body=st.one_of(
    st.fixed_dictionaries({"ids": JSONISH | TOKEN_IDS | st.lists(TOKEN_IDS, max_size=4)},
                          optional={"skip_special_tokens": JSONISH}).map(lambda b: ("/tei/decode", b)),
    st.fixed_dictionaries({"inputs": JSONISH}, optional={"add_special_tokens": JSONISH, "prompt_name": JSONISH})
    .map(lambda b: ("/tei/tokenize", b)),
    st.fixed_dictionaries({"input": JSONISH | TOKEN_IDS | st.lists(TOKEN_IDS, max_size=3)},
                          optional={"model": JSONISH, "encoding_format": JSONISH, "dimensions": JSONISH,
                                    "layer": JSONISH, "user": JSONISH}).map(lambda b: ("/v1/embeddings", b)),
    st.fixed_dictionaries({"inputs": st.text(min_size=1, max_size=20)},
                          optional={"embedding_types": JSONISH | st.lists(st.sampled_from(
                              ["float", "base64", "int8", "uint8", "binary", "ubinary", "int4"]), max_size=7),
                              "dim": st.sampled_from([8, 12, 16, 32]), "layer": st.integers(0, 4)})
    .map(lambda b: ("/embed", b)),
))
def test_new_surfaces_body_fuzz(client: TestClient, body: tuple[str, dict[str, object]]) -> None:
    path, payload = body
    r = client.post(path, content=json.dumps(payload, allow_nan=True), headers={"content-type": "application/json"})
    _assert_sane(r.status_code, r.content, r.headers.get("content-type", ""), path)


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
    # the same bytes on the TEI surface: its statuses (400 malformed JSON, 422 a body that does not
    # validate) and its shape
    r = client.post("/tei/embed", content=payload, headers={"content-type": "application/json"})
    assert r.status_code in ((400, 422) if status == 400 else (status,)), r.text[:300]
    _assert_sane(r.status_code, r.content, r.headers.get("content-type", ""), "/tei/embed")
