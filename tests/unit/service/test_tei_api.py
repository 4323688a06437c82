"""The text-embeddings-inference surface (/tei): TEI's fields and bare arrays, the same vectors as /embed,
/tokenize and /decode, TEI's /info, and every bad input's 4xx in TEI's error shape."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from tests.conftest import SMALL_LIMITS, TINY_HIDDEN, TINY_LAYERS, app_client, make_settings


def native(client: TestClient, texts: list[str], **budget: int) -> np.ndarray:
    r = client.post("/embed", json={"inputs": texts, **budget})
    assert r.status_code == 200, r.text
    return np.array(r.json()["embeddings"])


@pytest.mark.parametrize("path", ["/tei", "/tei/embed"])
def test_embed_returns_a_bare_array_equal_to_embed(client: TestClient, path: str) -> None:
    texts = ["the cat", "a quick brown fox"]
    r = client.post(path, json={"inputs": texts})
    assert r.status_code == 200, r.text
    got = np.array(r.json())
    assert got.shape == (2, TINY_HIDDEN)
    np.testing.assert_allclose(got, native(client, texts), atol=1e-6)
    assert r.headers["x-model-version"] == "tiny@1" and float(r.headers["x-inference-time"]) >= 0
    single = client.post(path, json={"inputs": "the cat"}).json()
    np.testing.assert_allclose(single, native(client, ["the cat"]), atol=1e-6)


def test_tei_fields_and_budget_extensions(client: TestClient) -> None:
    # TEI's own fields at their defaults are accepted; unknown fields are ignored, as TEI does
    r = client.post("/tei/embed", json={"inputs": ["the cat"], "truncate": True, "truncation_direction": "Right",
                                        "normalize": True, "prompt_name": None, "future_field": 1})
    assert r.status_code == 200, r.text
    want = native(client, ["the cat"], dim=8, layer=1)
    for body, query in [({"dimensions": 8, "layer": 1}, ""), ({"dim": 8}, "?layer=1"), ({}, "?dim=8&layer=1"),
                        ({"dimensions": 8, "dim": 8, "layer": 1}, "?layer=1")]:
        got = client.post("/tei/embed" + query, json={"inputs": ["the cat"], **body})
        assert got.status_code == 200, (body, query, got.text)
        np.testing.assert_allclose(got.json(), want, atol=1e-6)


def test_token_ids_from_tokenize_embed_like_the_text(client: TestClient) -> None:
    tokens = client.post("/tei/tokenize", json={"inputs": ["the cat", "a dog"]}).json()
    assert [[t["text"] for t in row] for row in tokens] == [["[CLS]", "the", "cat", "[SEP]"],
                                                            ["[CLS]", "a", "dog", "[SEP]"]]
    assert tokens[0][1] == {"id": 5, "text": "the", "special": False, "start": 0, "stop": 3}
    ids = [[t["id"] for t in row] for row in tokens]
    by_ids = np.array(client.post("/tei/embed", json={"inputs": ids}).json())
    np.testing.assert_allclose(by_ids, native(client, ["the cat", "a dog"]), atol=1e-6)
    one = np.array(client.post("/tei/embed", json={"inputs": ids[0]}).json())  # a single id list
    np.testing.assert_allclose(one, by_ids[:1], atol=1e-6)
    mixed = np.array(client.post("/tei/embed", json={"inputs": [ids[0], "a dog"]}).json())
    np.testing.assert_allclose(mixed, by_ids, atol=1e-6)
    assert client.post("/tei/decode", json={"ids": ids}).json() == ["the cat", "a dog"]
    assert client.post("/tei/decode", json={"ids": ids[0], "skip_special_tokens": False}).json() == [
        "[CLS] the cat [SEP]"]


def test_truncation_direction_and_refusal(tiny_model_dir: Path) -> None:
    with app_client(make_settings(tiny_model_dir, **SMALL_LIMITS, max_seq_length=4, verify_golden=False)) as c:
        long = "the quick brown fox jumps"
        right = np.array(c.post("/tei/embed", json={"inputs": long}).json())
        left = np.array(c.post("/tei/embed", json={"inputs": long, "truncation_direction": "Left"}).json())
        np.testing.assert_allclose(right, native(c, ["the quick"]), atol=1e-6)  # [CLS] the quick [SEP]
        assert not np.allclose(left, right)
        np.testing.assert_allclose(left, native(c, ["fox jumps"]), atol=1e-6)  # keeps the end
        r = c.post("/tei/embed", json={"inputs": ["ok", long], "truncate": False})
        assert r.status_code == 422
        assert r.json() == {"error": "inputs[1] is longer than the maximum of 4 tokens", "error_type": "Validation"}
        assert c.get("/tei/info").json()["max_input_length"] == 4


def test_info_has_tei_fields(client: TestClient) -> None:
    info = client.get("/tei/info").json()
    assert info["model_id"] == info["served_model_name"] == "tiny"
    assert info["model_type"] == {"embedding": {"pooling": "mean"}}
    assert info["model_dtype"] == "float32" and info["max_input_length"] == 64
    assert info["max_client_batch_size"] == 8 and info["max_batch_tokens"] == 16384
    assert info["max_concurrent_requests"] == 4096 and info["auto_truncate"] is True
    assert info["dims"] == [8, 16, 32] and info["layers"] == list(range(1, TINY_LAYERS + 1))
    assert info["model_version"] == "tiny@1" and info["version"] == "0.1.0"
    assert client.get("/tei/health").json() == {"status": "ok"}


TEI_BAD = [
    # (path, body or raw bytes, status, error_type, message fragment)
    ("/tei/embed", {"inputs": [5, 99999]}, 422, "Validation", "token id 99999 is outside the vocabulary (0..43)"),
    ("/tei/embed", {"inputs": [[5, -1]]}, 422, "Validation", "token id -1 is outside the vocabulary"),
    ("/tei/embed", {"inputs": [[5, True]]}, 422, "Validation", "inputs"),
    ("/tei/embed", {"inputs": "x", "truncation_direction": "Up"}, 422, "Validation",
     "truncation_direction: Input should be 'Right', 'Left', 'right' or 'left'"),
    ("/tei/embed", {"inputs": []}, 400, "Empty", "`inputs` cannot be empty"),
    ("/tei/embed", {"inputs": ["a", []]}, 422, "Validation", "inputs[1] is an empty list of token ids"),
    ("/tei/embed", {"inputs": ["a", ""]}, 422, "Validation", "inputs[1] is an empty string"),
    ("/tei/embed", {"inputs": ["a"] * 9}, 422, "Validation", "inputs has 9 items; at most 8 per request"),
    ("/tei/embed", {"inputs": "x", "normalize": False}, 422, "Validation", "normalize=false is not supported"),
    ("/tei/embed", {"inputs": "x", "prompt_name": "query"}, 422, "Validation", "the served model has no prompts"),
    ("/tei/embed", {"inputs": "x", "dimensions": 12}, 422, "Validation", "dimensions=12 is not served"),
    ("/tei/embed", {"inputs": "x", "layer": 9}, 422, "Validation", "layer=9 must be between 1 and 3"),
    ("/tei/embed", {"inputs": "x", "layer": "2"}, 422, "Validation",
     'layer: must be an exit layer (an integer) or "auto", got \'2\''),
    ("/tei/embed", {"inputs": "x", "dimensions": True}, 422, "Validation", "dimensions: Input should be a valid"),
    ("/tei/embed?dim=8", {"inputs": "x", "dimensions": 16}, 400, "Validation", "dim given with different values"),
    ("/tei/embed", {"text": "x"}, 422, "Validation", "inputs: Field required"),
    ("/tei/embed", b"{not json", 400, "Validation", "request body is not valid JSON"),
    ("/tei/embed", {"inputs": "x" * 30_000}, 413, "Validation", "request body exceeds 20000 bytes"),
    ("/tei/tokenize", {"inputs": []}, 400, "Empty", "inputs must not be empty"),
    ("/tei/tokenize", {"inputs": "x", "prompt_name": "q"}, 422, "Validation", "no prompts"),
    ("/tei/decode", {"ids": [[5], [44]]}, 422, "Validation", "ids[1][0]: token id 44 is outside the vocabulary"),
    ("/tei/decode", {"ids": []}, 400, "Empty", "`ids` cannot be empty"),
    ("/tei/decode", {"ids": [[5]] * 9}, 422, "Validation", "batch size 9 > maximum allowed batch size 8"),
    ("/tei/decode", {"ids": ["a"]}, 422, "Validation", "ids"),
    ("/tei/nope", {"inputs": "x"}, 404, "Validation", "Not Found"),
]


@pytest.mark.parametrize(("path", "body", "status", "error_type", "fragment"), TEI_BAD)
def test_bad_input_gets_a_tei_shaped_4xx(client: TestClient, path: str, body: object, status: int,
                                         error_type: str, fragment: str) -> None:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = client.post(path, content=raw, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    err = r.json()
    assert set(err) == {"error", "error_type"} and err["error_type"] == error_type
    assert fragment in err["error"], err
    assert client.post("/tei/embed", json={"inputs": "still serving"}).status_code == 200


def test_auth_and_content_type_errors_are_tei_shaped(tiny_model_dir: Path) -> None:
    with app_client(make_settings(tiny_model_dir, **SMALL_LIMITS, api_key="k3y")) as c:
        r = c.post("/tei/embed", json={"inputs": "x"})
        assert r.status_code == 401 and r.json() == {"error": "missing or invalid API key", "error_type": "Validation"}
        ok = c.post("/tei/embed", json={"inputs": "x"}, headers={"authorization": "Bearer k3y"})
        assert ok.status_code == 200
        r = c.post("/tei/embed", content=b"inputs=x", headers={"authorization": "Bearer k3y",
                                                                "content-type": "text/plain"})
        assert r.status_code == 415 and r.json()["error_type"] == "Validation"
        # elsewhere, the same errors keep OpenAI's shape
        assert c.post("/embed", json={"inputs": "x"}).json()["error"]["code"] == "invalid_api_key"


def test_tei_requests_are_counted_in_metrics(client: TestClient) -> None:
    client.post("/tei/embed", json={"inputs": "the cat", "dimensions": 8, "layer": 1})
    text = client.get("/metrics").text
    assert 'mipic_requests_total{endpoint="/tei/embed",status="200"}' in text
    assert 'mipic_embeddings_total{dim="8",layer="1",model_version="1"}' in text
