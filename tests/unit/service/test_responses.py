"""The embed responses are written once from the NumPy batch (orjson): same values as the engine's vectors, bit
for bit after a float32 round trip, and the shape each route's response model declares."""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import orjson
import pytest
from fastapi.testclient import TestClient
from tests.conftest import make_settings

from mipic.modeldir.runner import Row
from mipic.service.api.responses import VectorsJSONResponse
from mipic.service.api.schemas import EmbedResponse, OpenAIEmbeddingResponse
from mipic.service.settings import Settings

TEXTS = ["the quick brown fox", "a cat", "the lazy dog is not a cat"]


@pytest.fixture(scope="module")
def client_settings(tiny_model_dir: Path) -> Settings:
    return make_settings(tiny_model_dir)


def _reference(client: TestClient, dim: int, layer: int) -> np.ndarray:
    model = client.app.state.engine.model  # type: ignore[attr-defined]
    return np.stack(model.run([Row(ids=e.ids, dim=dim, layer=layer) for e in model.tokenizer.encode(TEXTS)]))


def test_float32_arrays_are_written_as_shortest_round_trip_decimals() -> None:
    v = np.array([[0.1, 1 / 3, -2.5e-8]], dtype=np.float32)
    body = VectorsJSONResponse({"x": v}).body
    assert body == b'{"x":[[0.1,0.33333334,-2.5e-8]]}'
    assert np.array_equal(np.asarray(orjson.loads(body)["x"], dtype=np.float32), v)


def test_native_embed_is_the_engine_vectors_in_its_response_model(client: TestClient) -> None:
    r = client.post("/embed?dim=16&layer=2", json={"inputs": TEXTS})
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    body = EmbedResponse.model_validate(r.json())
    assert (body.dim, body.layer, body.usage.tokens) == (16, 2, 6 + 4 + 9)
    assert np.array_equal(np.asarray(body.embeddings, dtype=np.float32), _reference(client, 16, 2))


def test_native_embed_types_keep_their_integers(client: TestClient) -> None:
    r = client.post("/embed?dim=16&layer=2", json={"inputs": TEXTS, "embedding_types": ["ubinary", "float"]})
    body = EmbedResponse.model_validate(r.json())
    assert isinstance(body.embeddings, dict)
    bits = np.asarray(body.embeddings["ubinary"])
    assert bits.dtype.kind == "i" and bits.shape == (3, 2)
    assert np.array_equal(bits, np.packbits(_reference(client, 16, 2) > 0, axis=-1))


def test_openai_float_and_base64_are_the_engine_vectors(client: TestClient) -> None:
    ref = _reference(client, 32, 3)
    floats = OpenAIEmbeddingResponse.model_validate(
        client.post("/v1/embeddings", json={"input": TEXTS, "dimensions": 32, "layer": 3}).json())
    assert [d.index for d in floats.data] == [0, 1, 2] and floats.usage.total_tokens == 19
    assert np.array_equal(np.asarray([d.embedding for d in floats.data], dtype=np.float32), ref)
    b64 = OpenAIEmbeddingResponse.model_validate(client.post("/v1/embeddings", json={
        "input": TEXTS, "dimensions": 32, "layer": 3, "encoding_format": "base64"}).json())
    decoded = np.stack([np.frombuffer(base64.b64decode(str(d.embedding)), dtype="<f4") for d in b64.data])
    assert np.array_equal(decoded, ref)


def test_tei_embed_is_a_bare_list_of_the_engine_vectors(client: TestClient) -> None:
    r = client.post("/tei/embed?dim=8&layer=1", json={"inputs": TEXTS})
    assert r.status_code == 200
    assert np.array_equal(np.asarray(r.json(), dtype=np.float32), _reference(client, 8, 1))
