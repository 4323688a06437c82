"""Every Python snippet of the README's "Clients" section, run as written against the default model on a
loopback server: each must return the vectors of POST /embed at its budget (cosine >= 0.9999)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from mipic.service.app import create_app
from mipic.service.settings import Settings

README = Path(__file__).resolve().parents[2] / "README.md"
BUDGET = {"dim": 64, "layer": 3}  # every snippet says so


def client_snippets() -> list[str]:
    text = README.read_text()
    section = text[text.index("\n## Clients\n"):]
    section = section[: section.index("\n## ", 1)]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_the_section_has_a_snippet_per_client() -> None:
    libraries = ["from openai import", "from langchain_openai import", "llama_index.embeddings.openai_like",
                 "llama_index.embeddings.text_embeddings_inference", "from huggingface_hub import InferenceClient",
                 "from langchain_huggingface import"]
    snippets = client_snippets()
    assert len(snippets) == len(libraries)
    for lib in libraries:
        assert sum(lib in s for s in snippets) == 1, lib


@pytest.fixture(scope="module")
def server(minilm_dir: Path) -> Iterator[str]:
    from tests.conftest import LiveServer, free_port

    s = Settings(model_dir=minilm_dir, provider="cpu", bootstrap_default=False)  # type: ignore[arg-type]
    with LiveServer(create_app(s), free_port()) as srv:
        yield srv.url


@pytest.mark.integration
@pytest.mark.usefixtures("hub_session_for_loopback")
@pytest.mark.parametrize("index", range(6))
def test_readme_snippet_returns_the_embed_vectors(server: str, index: int) -> None:
    code = client_snippets()[index]
    assert code.count("http://localhost:8080") >= 1
    namespace: dict[str, object] = {}
    exec(compile(code.replace("http://localhost:8080", server), f"README snippet {index}", "exec"), namespace)
    texts = namespace["texts"]
    want = np.array(httpx.post(f"{server}/embed", json={"inputs": texts, **BUDGET}).json()["embeddings"])
    got = np.asarray(namespace["vectors"], dtype=np.float64)
    assert got.shape == want.shape == (2, BUDGET["dim"])
    cos = np.sum(got * want, axis=1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))
    assert cos.min() >= 0.9999, cos
