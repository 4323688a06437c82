"""The real client libraries, unmodified, against a live server on loopback: each returns the vectors of
/embed (cosine >= 0.9999 for float) and surfaces the server's errors."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from mipic.service.app import create_app
from mipic.service.settings import Settings

TEXTS = ["the quick brown fox", "a lazy dog", "the cat jumps over the dog"]


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path) -> Iterator[str]:
    from tests.conftest import LiveServer, free_port

    s = Settings(model_dir=tiny_model_dir, provider="cpu", bootstrap_default=False,  # type: ignore[arg-type]
                 model_aliases=["text-embedding-3-small"])
    with LiveServer(create_app(s), free_port()) as srv:
        yield srv.url


def native(url: str, texts: list[str], dim: int, layer: int) -> np.ndarray:
    r = httpx.post(f"{url}/embed?dim={dim}&layer={layer}", json={"inputs": texts})
    assert r.status_code == 200, r.text
    return np.array(r.json()["embeddings"])


def assert_same(got: object, want: np.ndarray) -> None:
    g = np.asarray(got, dtype=np.float64)
    assert g.shape == want.shape
    cos = np.sum(g * want, axis=1) / (np.linalg.norm(g, axis=1) * np.linalg.norm(want, axis=1))
    assert cos.min() >= 0.9999, cos


def test_openai_python(server: str) -> None:
    import openai

    client = openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0)
    r = client.embeddings.create(model="tiny", input=TEXTS, dimensions=16, extra_body={"layer": 2})
    assert_same([d.embedding for d in r.data], native(server, TEXTS, 16, 2))  # the client asked for base64
    assert r.model == "tiny" and r.usage.prompt_tokens > 0
    f = client.embeddings.create(model="text-embedding-3-small", input=TEXTS, encoding_format="float")
    assert f.model == "text-embedding-3-small"
    assert_same([d.embedding for d in f.data], native(server, TEXTS, 32, 3))
    q = client.embeddings.create(model="tiny", input=TEXTS, dimensions=16, encoding_format="int8",  # type: ignore[arg-type]
                                 extra_body={"layer": 2})
    int8 = httpx.post(f"{server}/embed?dim=16&layer=2", json={"inputs": TEXTS, "embedding_types": ["int8"]})
    assert [d.embedding for d in q.data] == int8.json()["embeddings"]["int8"]  # (the client types them as floats)
    assert client.models.retrieve("text-embedding-3-small").owned_by == "mipic"
    assert [m.id for m in client.models.list()] == ["tiny", "text-embedding-3-small"]
    with pytest.raises(openai.NotFoundError, match="is not served here"):
        client.embeddings.create(model="text-embedding-ada-002", input="x")
    with pytest.raises(openai.BadRequestError, match="check_embedding_ctx_length=False"):
        client.embeddings.create(model="tiny", input=[[9906, 1917]])


def test_langchain_openai_with_the_documented_settings(server: str) -> None:
    from langchain_openai import OpenAIEmbeddings

    emb = OpenAIEmbeddings(model="tiny", base_url=f"{server}/v1", api_key="unused",  # type: ignore[arg-type]
                           check_embedding_ctx_length=False, dimensions=16, model_kwargs={"extra_body": {"layer": 2}})
    want = native(server, TEXTS, 16, 2)
    assert_same(emb.embed_documents(TEXTS), want)
    assert_same([emb.embed_query(TEXTS[0])], want[:1])
    assert_same(asyncio.run(emb.aembed_documents(TEXTS)), want)
    # its default chunk_size (1000 inputs per request) fits the 2,048-input limit
    many = emb.embed_documents(["the cat"] * 1001)
    assert len(many) == 1001


def test_langchain_openai_defaults_get_a_400_that_says_what_to_change(server: str,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """With its defaults LangChain tokenizes with tiktoken and sends token ids; the error names the fix."""
    import llama_index.core
    import openai
    from langchain_openai import OpenAIEmbeddings

    # tiktoken downloads its encoding at first use; llama-index-core ships it, which keeps this offline
    cache = Path(llama_index.core.__file__).parent / "_static" / "tiktoken_cache"
    assert cache.is_dir()
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache))
    emb = OpenAIEmbeddings(model="text-embedding-3-small", base_url=f"{server}/v1", api_key="unused",  # type: ignore[arg-type]
                           max_retries=0)
    with pytest.raises(openai.BadRequestError, match="check_embedding_ctx_length=False"):
        emb.embed_documents(TEXTS)


def test_llama_index_openai_like(server: str) -> None:
    from llama_index.embeddings.openai_like import OpenAILikeEmbedding

    emb = OpenAILikeEmbedding(model_name="tiny", api_base=f"{server}/v1", api_key="unused", dimensions=16,
                              additional_kwargs={"extra_body": {"layer": 2}}, max_retries=0)
    want = native(server, TEXTS, 16, 2)
    assert_same(emb.get_text_embedding_batch(TEXTS), want)
    assert_same([emb.get_query_embedding(TEXTS[1])], want[1:2])


def test_llama_index_text_embeddings_inference(server: str) -> None:
    from llama_index.embeddings.text_embeddings_inference import TextEmbeddingsInference

    emb = TextEmbeddingsInference(model_name="tiny", base_url=f"{server}/tei")
    assert_same(emb.get_text_embedding_batch(TEXTS), native(server, TEXTS, 32, 3))
    # a budget through the endpoint's query string (dim/layer are extensions of TEI's /embed)
    budget = TextEmbeddingsInference(model_name="tiny", base_url=f"{server}/tei", endpoint="/embed?dim=16&layer=2")
    assert_same(budget.get_text_embedding_batch(TEXTS), native(server, TEXTS, 16, 2))
    assert_same(asyncio.run(budget.aget_text_embedding_batch(TEXTS)), native(server, TEXTS, 16, 2))


@pytest.mark.usefixtures("hub_session_for_loopback")
def test_huggingface_hub_inference_client(server: str) -> None:
    from huggingface_hub import InferenceClient
    from huggingface_hub.errors import HfHubHTTPError

    client = InferenceClient(base_url=f"{server}/tei")
    out = client.feature_extraction(TEXTS)
    assert out.dtype == np.float32 and out.shape == (3, 32)
    assert_same(out, native(server, TEXTS, 32, 3))
    assert_same(client.feature_extraction(TEXTS[0], normalize=True, truncate=True, truncation_direction="Left"),
                native(server, TEXTS[:1], 32, 3))
    shallow = InferenceClient(base_url=f"{server}/tei?dim=16&layer=2")
    assert_same(shallow.feature_extraction(TEXTS), native(server, TEXTS, 16, 2))
    with pytest.raises(HfHubHTTPError, match="normalize=false is not supported") as exc:
        client.feature_extraction(TEXTS[0], normalize=False)
    assert exc.value.response is not None and exc.value.response.status_code == 422


@pytest.mark.usefixtures("hub_session_for_loopback")
def test_langchain_huggingface_endpoint_embeddings(server: str) -> None:
    """langchain-huggingface 1.x refuses a URL as ``model`` (it only builds Hub clients), so its two public
    client fields are pointed at the server: the class itself runs unmodified."""
    from huggingface_hub import AsyncInferenceClient, InferenceClient
    from langchain_huggingface import HuggingFaceEndpointEmbeddings

    url = f"{server}/tei?dim=16&layer=2"
    emb = HuggingFaceEndpointEmbeddings(model="mipic", huggingfacehub_api_token="unused")
    emb.client = InferenceClient(base_url=url)
    emb.async_client = AsyncInferenceClient(base_url=url)
    want = native(server, TEXTS, 16, 2)
    assert_same(emb.embed_documents(TEXTS), want)
    assert_same([emb.embed_query(TEXTS[2])], want[2:])
    assert_same(asyncio.run(emb.aembed_documents(TEXTS)), want)
