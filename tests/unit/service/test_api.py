"""HTTP API: shapes, defaults, every bad input's 4xx, timing headers, metrics, the openai client."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from tests.conftest import SMALL_LIMITS, TINY_HIDDEN, TINY_LAYERS, app_client, make_settings

from mipic.service.app import create_app


def test_embed_returns_unit_vectors_of_requested_budget(client: TestClient) -> None:
    r = client.post("/embed?dim=16&layer=2", json={"inputs": ["the cat", "a dog"]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["dim"] == 16 and body["layer"] == 2 and body["model"] == "tiny@1"
    emb = np.array(body["embeddings"])
    assert emb.shape == (2, 16)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert body["usage"]["tokens"] == 4 + 4  # [CLS] w w [SEP] each
    for h in ("x-total-time", "x-tokenization-time", "x-queue-time", "x-inference-time"):
        assert float(r.headers[h]) >= 0.0
    assert r.headers["x-model-version"] == "tiny@1"


def test_defaults_and_body_params(client: TestClient) -> None:
    full = client.post("/embed", json={"inputs": "the cat"}).json()
    assert (full["dim"], full["layer"]) == (TINY_HIDDEN, TINY_LAYERS)
    in_body = client.post("/embed", json={"inputs": "the cat", "dim": 8, "layer": 1}).json()
    in_query = client.post("/embed?dim=8&layer=1", json={"inputs": "the cat"}).json()
    assert in_body["embeddings"] == in_query["embeddings"]
    # a prefix of the full vector, renormalised, is what dim=8 at the last layer returns
    d8 = np.array(client.post("/embed?dim=8", json={"inputs": "the cat"}).json()["embeddings"][0])
    f = np.array(full["embeddings"][0])[:8]
    np.testing.assert_allclose(d8, f / np.linalg.norm(f), atol=1e-5)


BAD_REQUESTS = [
    # (query, body or raw bytes, content type, status, code, param)
    ("?dim=12", {"inputs": "x"}, "application/json", 400, "invalid_budget", "dim"),
    ("?dim=64", {"inputs": "x"}, "application/json", 400, "invalid_budget", "dim"),
    ("?dim=-1", {"inputs": "x"}, "application/json", 400, "invalid_budget", "dim"),
    ("?layer=0", {"inputs": "x"}, "application/json", 400, "invalid_budget", "layer"),
    ("?layer=99", {"inputs": "x"}, "application/json", 400, "invalid_budget", "layer"),
    ("?layer=abc", {"inputs": "x"}, "application/json", 400, "invalid_value", "layer"),
    ("", {"inputs": "x", "dim": 10**30}, "application/json", 400, "invalid_budget", "dim"),
    ("", {"inputs": []}, "application/json", 400, "invalid_request", "inputs"),
    ("", {"inputs": ""}, "application/json", 400, "invalid_request", "inputs[0]"),
    ("", {"inputs": ["ok", ""]}, "application/json", 400, "invalid_request", "inputs[1]"),
    ("", {"inputs": ["ok", 3]}, "application/json", 400, "invalid_value", "inputs[1]"),
    ("", {"inputs": ["a"] * 9}, "application/json", 400, "invalid_request", "inputs"),
    ("", {"inputs": [["nested"]]}, "application/json", 400, "invalid_value", "inputs[0]"),
    ("", {"text": "x"}, "application/json", 400, "invalid_value", "inputs"),
    ("", {"inputs": "x", "unknown": 1}, "application/json", 400, "invalid_value", "unknown"),
    ("?dim=8", {"inputs": "x", "dim": 16}, "application/json", 400, "conflict", "dim"),
    # strict integers: a boolean would serve layer 1, a string would pass for a number
    ("", {"inputs": "x", "layer": True}, "application/json", 400, "invalid_value", "layer"),
    ("", {"inputs": "x", "layer": False}, "application/json", 400, "invalid_value", "layer"),
    ("", {"inputs": "x", "dim": "16"}, "application/json", 400, "invalid_value", "dim"),
    ("", {"inputs": "x", "dim": 16.0}, "application/json", 400, "invalid_value", "dim"),
    ("", {"inputs": "x", "layer": "2"}, "application/json", 400, "invalid_value", "layer"),
    ("", b"{not json", "application/json", 400, "invalid_json", None),
    ("", b"[1, 2]", "application/json", 400, "invalid_value", None),
    ("", b"inputs=x", "application/x-www-form-urlencoded", 415, "unsupported_media_type", None),
    ("", b"x", "text/plain", 415, "unsupported_media_type", None),
    ("", {"inputs": "x" * 30_000}, "application/json", 413, "request_too_large", None),
]


@pytest.mark.parametrize(("query", "body", "ctype", "status", "code", "param"), BAD_REQUESTS)
def test_bad_input_gets_its_4xx_and_server_keeps_serving(client: TestClient, query, body, ctype,  # type: ignore[no-untyped-def]
                                                          status, code, param) -> None:
    import json

    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = client.post("/embed" + query, content=raw, headers={"content-type": ctype})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code
    assert err["param"] == param
    assert err["type"] == "invalid_request_error"
    assert "Traceback" not in r.text and "/work" not in r.text
    assert client.post("/embed", json={"inputs": "still serving"}).status_code == 200


def test_openai_errors_name_openai_fields(client: TestClient) -> None:
    r = client.post("/v1/embeddings", json={"input": "x", "model": "tiny", "dimensions": 12})
    assert r.status_code == 400 and r.json()["error"]["param"] == "dimensions"
    r = client.post("/v1/embeddings", json={"input": "x", "model": "text-embedding-3-small"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    r = client.post("/v1/embeddings", json={"input": [], "model": "tiny"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "input"
    r = client.post("/v1/embeddings", json={"input": "x", "encoding_format": "int4"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "encoding_format"
    for field, value in (("dimensions", True), ("dimensions", "16"), ("layer", True), ("layer", "1")):
        r = client.post("/v1/embeddings", json={"input": "x", field: value})
        assert r.status_code == 400, (field, value, r.text)
        assert r.json()["error"]["param"] == field and r.json()["error"]["code"] == "invalid_value"


def test_unknown_route_and_method_are_json_errors(client: TestClient) -> None:
    r = client.get("/nope")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = client.get("/embed")
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"


def test_health_ready_info(client: TestClient) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/ready").json()["status"] == "ready"
    info = client.get("/info").json()
    assert info["hidden_size"] == TINY_HIDDEN and info["num_layers"] == TINY_LAYERS
    assert info["dims"] == [8, 16, 32] and info["layers"] == [1, 2, 3]
    assert info["trained_budgets"] == [{"dim": 8, "layer": 1}, {"dim": 32, "layer": 3}]
    assert info["provider"] == "CPUExecutionProvider"
    assert info["max_seq_length"] == 64


def test_metrics_have_budget_labels(client: TestClient) -> None:
    client.post("/embed?dim=8&layer=1", json={"inputs": ["the cat"]})
    text = client.get("/metrics").text
    assert 'mipic_request_duration_seconds_bucket{dim="8",endpoint="/embed",layer="1",le="0.0005",' \
           'model_version="1"}' in text
    assert 'mipic_requests_total{endpoint="/embed",status="200"}' in text
    assert 'mipic_requests_total{endpoint="/embed",status="400"}' in text
    for name in ("mipic_tokenization_duration_seconds_count", "mipic_queue_duration_seconds_count",
                 "mipic_inference_duration_seconds_count", "mipic_batch_size_count",
                 "mipic_batch_tokens_count", "mipic_queue_depth", "mipic_model_info"):
        assert name in text


def test_inputs_shed_at_the_batch_are_a_counter(client: TestClient) -> None:
    """``mipic_auto_shed_inputs_total`` follows the batcher's count of inputs shed before compute (the shedding
    itself: ``test_batcher.py``), and never goes down."""
    batcher = client.app.state.engine.batcher  # type: ignore[attr-defined]
    assert "mipic_auto_shed_inputs_total 0.0" in client.get("/metrics").text
    batcher.shed_rows += 5
    assert "mipic_auto_shed_inputs_total 5.0" in client.get("/metrics").text
    batcher.shed_rows += 2
    assert "mipic_auto_shed_inputs_total 7.0" in client.get("/metrics").text
    assert "mipic_auto_shed_inputs_total 7.0" in client.get("/metrics").text  # a second scrape adds nothing


def test_openai_client_round_trip(tiny_model_dir: Path, live_server_factory) -> None:  # type: ignore[no-untyped-def]
    openai = pytest.importorskip("openai")
    srv = live_server_factory(create_app(make_settings(tiny_model_dir, **SMALL_LIMITS)))
    client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0)
    # default: the client asks for base64 and decodes it
    res = client.embeddings.create(model="tiny", input=["the cat", "a dog"], dimensions=16)
    assert [d.index for d in res.data] == [0, 1]
    assert len(res.data[0].embedding) == 16
    assert res.usage.prompt_tokens == 8 and res.usage.total_tokens == 8
    floats = client.embeddings.create(model="tiny", input="the cat", dimensions=16, encoding_format="float")
    np.testing.assert_allclose(floats.data[0].embedding, res.data[0].embedding, atol=1e-6)
    native = client.post("/../embed?dim=16", body={"inputs": "the cat"}, cast_to=object)
    np.testing.assert_allclose(native["embeddings"][0], res.data[0].embedding, atol=1e-6)
    # the layer extension travels in extra_body
    shallow = client.embeddings.create(model="tiny", input="the cat", dimensions=16, extra_body={"layer": 1})
    assert not np.allclose(shallow.data[0].embedding, res.data[0].embedding)
    with pytest.raises(openai.BadRequestError) as exc:
        client.embeddings.create(model="tiny", input="x", dimensions=12)
    assert exc.value.body["param"] == "dimensions"  # type: ignore[index]


def test_a_too_long_input_is_named_by_each_surfaces_own_field(tiny_model_dir: Path) -> None:
    """With truncation off, a too-long text is a 400 naming the body field the client sent: ``inputs[i]`` on
    /embed, ``input[i]`` on /v1/embeddings."""
    long_text = " ".join(["hello"] * 400)
    with app_client(make_settings(tiny_model_dir, truncate=False)) as c:
        r = c.post("/embed", json={"inputs": ["hi", long_text]})
        assert r.status_code == 400 and r.json()["error"]["param"] == "inputs[1]"
        assert r.json()["error"]["message"].startswith("inputs[1] ")
        r = c.post("/v1/embeddings", json={"input": ["hi", long_text], "model": "tiny"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "input[1]"
