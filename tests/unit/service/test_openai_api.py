"""The OpenAI surface in full: model names and aliases, /v1/models/{id}, output types equal to /embed's,
2,048 inputs by default, token-id arrays refused with a message that says what to change."""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError
from tests.conftest import app_client, make_settings

from mipic.service.settings import Settings


@pytest.fixture(scope="module")
def client_settings(tiny_model_dir: Path) -> Settings:
    return make_settings(tiny_model_dir, model_aliases=["text-embedding-3-small", "org/tiny-alias"])


def test_model_names_aliases_and_echo(client: TestClient) -> None:
    for name in ("tiny", "tiny@1", "text-embedding-3-small", "org/tiny-alias"):
        r = client.post("/v1/embeddings", json={"input": "the cat", "model": name, "user": "u-1"})
        assert r.status_code == 200, r.text
        assert r.json()["model"] == name
    assert client.post("/v1/embeddings", json={"input": "the cat"}).json()["model"] == "tiny"
    r = client.post("/v1/embeddings", json={"input": "the cat", "model": "text-embedding-ada-002"})
    assert r.status_code == 404
    err = r.json()["error"]
    assert err["code"] == "model_not_found" and err["param"] == "model"
    assert "['tiny', 'text-embedding-3-small', 'org/tiny-alias']" in err["message"]
    assert "MIPIC_ACCEPT_ANY_MODEL" in err["message"]


def test_models_list_and_retrieve(client: TestClient) -> None:
    listed = client.get("/v1/models").json()
    assert listed["object"] == "list"
    assert [m["id"] for m in listed["data"]] == ["tiny", "text-embedding-3-small", "org/tiny-alias"]
    first = listed["data"][0]
    assert first["object"] == "model" and first["owned_by"] == "mipic" and first["root"] == "tiny"
    assert first["created"] > 1_700_000_000  # the export's time, in Unix seconds
    assert client.get("/v1/models/org/tiny-alias").json()["id"] == "org/tiny-alias"
    assert client.get("/v1/models/tiny@1").json()["root"] == "tiny"
    r = client.get("/v1/models/gpt-4")
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


def test_accept_any_model(tiny_model_dir: Path) -> None:
    with app_client(make_settings(tiny_model_dir, accept_any_model=True)) as c:
        r = c.post("/v1/embeddings", json={"input": "x", "model": "text-embedding-ada-002"})
        assert r.status_code == 200 and r.json()["model"] == "text-embedding-ada-002"
        assert c.get("/v1/models/anything").json()["id"] == "anything"
        assert [m["id"] for m in c.get("/v1/models").json()["data"]] == ["tiny"]


@pytest.mark.parametrize("fmt", ["float", "base64", "int8", "uint8", "binary", "ubinary"])
def test_encoding_formats_equal_embed_types(client: TestClient, fmt: str) -> None:
    texts = ["the cat", "a quick brown fox jumps"]
    r = client.post("/v1/embeddings", json={"input": texts, "dimensions": 16, "layer": 2, "encoding_format": fmt})
    assert r.status_code == 200, r.text
    got = [d["embedding"] for d in r.json()["data"]]
    native = client.post("/embed", json={"inputs": texts, "dim": 16, "layer": 2, "embedding_types": [fmt]})
    assert native.status_code == 200, native.text
    assert got == native.json()["embeddings"][fmt]
    floats = np.array(client.post("/embed", json={"inputs": texts, "dim": 16, "layer": 2}).json()["embeddings"])
    if fmt == "base64":
        decoded = np.stack([np.frombuffer(base64.b64decode(s), dtype="<f4") for s in got])
        np.testing.assert_array_equal(decoded, floats.astype(np.float32))
    elif fmt in ("binary", "ubinary"):
        bits = np.unpackbits(np.array(got, dtype=np.int16).astype(np.uint8) if fmt == "ubinary"
                             else (np.array(got, dtype=np.int16) + 128).astype(np.uint8), axis=1)
        np.testing.assert_array_equal(bits, floats > 0)
    elif fmt in ("int8", "uint8"):
        q = np.array(got, dtype=np.float64) - (128 if fmt == "uint8" else 0)  # centred levels
        assert q.shape == (2, 16) and q.min() >= -128 and q.max() <= 127
        # one scale for the whole vector: the codes point where the float vector points
        low, high = _ranges(client, 16, 2)
        np.testing.assert_allclose((q + 127.5) / 255 * (high - low) + low, floats, atol=(high - low) / 255)
        cos = np.sum(q * floats, axis=1) / np.linalg.norm(q, axis=1)
        assert cos.min() > 0.999, cos


def _ranges(client: TestClient, dim: int, layer: int) -> tuple[float, float]:
    from mipic.modeldir.manifest import budget_key

    engine = client.app.state.engine  # type: ignore[attr-defined]
    r = engine.model.manifest.calibration.ranges[budget_key(dim, layer)]
    return r.low, r.high


def test_embed_types_together_and_in_order(client: TestClient) -> None:
    r = client.post("/embed", json={"inputs": ["the cat"], "dim": 8, "embedding_types": ["ubinary", "float", "ubinary"]})
    assert r.status_code == 200, r.text
    emb = r.json()["embeddings"]
    assert list(emb) == ["ubinary", "float"]
    assert np.packbits(np.array(emb["float"]) > 0, axis=1).tolist() == emb["ubinary"]


def test_token_id_arrays_are_refused_with_what_to_change(client: TestClient) -> None:
    for body, param in [({"input": [[9906, 1917]]}, "input[0]"), ({"input": [9906, 1917]}, "input")]:
        r = client.post("/v1/embeddings", json={**body, "model": "tiny"})
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert err["param"] == param and err["type"] == "invalid_request_error"
        assert "check_embedding_ctx_length=False" in err["message"] and "/tei/embed" in err["message"]


def test_limits_default_to_openai_and_stay_consistent(tiny_model_dir: Path) -> None:
    s = make_settings(tiny_model_dir, max_request_bytes=4_000_000)
    assert s.max_inputs_per_request == 2048 and s.max_queue_size >= s.max_inputs_per_request
    with app_client(s) as c:
        ok = c.post("/v1/embeddings", json={"input": ["the cat"] * 2048, "dimensions": 8, "layer": 1})
        assert ok.status_code == 200 and len(ok.json()["data"]) == 2048
        r = c.post("/v1/embeddings", json={"input": ["the cat"] * 2049})
        assert r.status_code == 400
        assert r.json()["error"]["message"] == "input has 2049 items; at most 2048 per request"
        r = c.post("/tei/embed", json={"inputs": ["the cat"] * 2049})
        assert r.status_code == 422 and r.json()["error_type"] == "Validation"
    with pytest.raises(ValidationError, match=r"max_queue_size \(1024\) must be >= max_inputs_per_request \(2048\)"):
        make_settings(tiny_model_dir, max_queue_size=1024)


def test_bits_need_a_dim_that_is_a_multiple_of_8_on_every_surface(tiny_model_dir: Path, tmp_path: Path) -> None:
    import shutil

    from mipic.modeldir.manifest import load_manifest, write_manifest

    d = tmp_path / "odd" / "1"
    shutil.copytree(tiny_model_dir, d)
    write_manifest(d, load_manifest(d).model_copy(update={"dims": [8, 12, 16, 32], "calibration": None}))
    with app_client(make_settings(d)) as c:
        r = c.post("/embed?dim=12", json={"inputs": "the cat", "embedding_types": ["float", "binary"]})
        assert r.status_code == 400
        assert r.json()["error"]["param"] == "embedding_types"
        assert "dim must be a multiple of 8; got 12" in r.json()["error"]["message"]
        r = c.post("/v1/embeddings", json={"input": "the cat", "dimensions": 12, "encoding_format": "ubinary"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "encoding_format"
        assert c.post("/v1/embeddings", json={"input": "x", "dimensions": 16, "encoding_format": "ubinary"}
                      ).status_code == 200
        # no calibration in this copy: int8 says how to get it
        r = c.post("/v1/embeddings", json={"input": "x", "dimensions": 16, "encoding_format": "int8"})
        assert r.status_code == 400 and "mipic calibrate" in r.json()["error"]["message"]
        assert c.post("/embed?dim=12", json={"inputs": "the cat"}).status_code == 200
