"""The OpenAPI document lists every route and every request field of every surface."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient
from tests.conftest import make_settings

from mipic.service.app import create_app

DEPTH = ("min_layer", "max_layer", "max_latency_ms")  # with layer "auto"


def test_openapi_lists_every_route_and_field(tiny_model_dir: Path) -> None:
    app = create_app(make_settings(tiny_model_dir))
    doc = TestClient(app).get("/openapi.json").json()
    routes = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    assert routes == {
        ("POST", "/embed"), ("POST", "/v1/embeddings"), ("GET", "/v1/models"), ("GET", "/v1/models/{model_id}"),
        ("POST", "/tei"), ("POST", "/tei/embed"), ("POST", "/tei/tokenize"), ("POST", "/tei/decode"),
        ("GET", "/tei/info"), ("GET", "/tei/health"), ("GET", "/health"), ("GET", "/ready"), ("GET", "/info"),
        ("GET", "/metrics"), ("GET", "/budgets"), ("GET", "/budgets/traffic"), ("POST", "/admin/reload"),
    }
    schemas = doc["components"]["schemas"]

    def fields(name: str) -> set[str]:
        return set(schemas[name]["properties"])

    assert fields("TeiEmbedRequest") == {"inputs", "truncate", "truncation_direction", "prompt_name", "normalize",
                                         "dimensions", "dim", "layer", *DEPTH}
    assert fields("TeiTokenizeRequest") == {"inputs", "add_special_tokens", "prompt_name"}
    assert fields("TeiDecodeRequest") == {"ids", "skip_special_tokens"}
    assert {"model_id", "max_input_length", "max_batch_tokens", "max_client_batch_size", "model_type"} <= fields(
        "TeiInfo")
    assert fields("OpenAIEmbeddingRequest") == {"input", "model", "dimensions", "encoding_format", "user", "layer",
                                                *DEPTH}
    assert schemas["OpenAIEmbeddingRequest"]["properties"]["encoding_format"]["enum"] == [
        "float", "base64", "int8", "uint8", "binary", "ubinary"]
    assert fields("EmbedRequest") == {"inputs", "dim", "layer", "embedding_types", *DEPTH}
    # layer "auto" and its bounds are documented in the query too, where dim and layer may be given
    embed_query = {p["name"] for p in doc["paths"]["/embed"]["post"]["parameters"]}
    assert embed_query == {"dim", "layer", *DEPTH}
    assert fields("OpenAIModel") == {"id", "object", "created", "owned_by", "root", "version"}
    # TEI's routes document TEI's error body
    responses = doc["paths"]["/tei/embed"]["post"]["responses"]
    assert responses["422"]["content"]["application/json"]["schema"]["$ref"].endswith("/TeiErrorResponse")
