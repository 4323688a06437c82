"""The packaged all-MiniLM-L6-v2: export, parity with sentence-transformers, serving /embed?dim=64&layer=6."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.integration

SENTENCES = [
    "A man is playing a guitar.",
    "Someone plays an instrument on stage.",
    "The stock market fell sharply on Monday.",
    "Matryoshka embeddings nest smaller vectors inside larger ones.",
]


def test_full_budget_matches_sentence_transformers(minilm_dir: Path) -> None:
    from sentence_transformers import SentenceTransformer

    from mipic.service.engine.model import LoadedModel, Row
    from mipic.training.export import packaged_minilm_path

    st = SentenceTransformer(str(packaged_minilm_path()), device="cpu")
    ref = st.encode(SENTENCES, normalize_embeddings=True)
    ref64 = st.encode(SENTENCES, normalize_embeddings=True, truncate_dim=64)
    model = LoadedModel(minilm_dir, provider="cpu")
    ids = [e.ids for e in model.tokenizer.encode(SENTENCES)]
    got = np.stack(model.run([Row(ids=i, dim=384, layer=6) for i in ids]))
    np.testing.assert_allclose(got, ref, atol=1e-5)
    got64 = np.stack(model.run([Row(ids=i, dim=64, layer=6) for i in ids]))
    ref64 = ref64 / np.linalg.norm(ref64, axis=1, keepdims=True)
    np.testing.assert_allclose(got64, ref64, atol=1e-5)
    # semantics survive: the paraphrase pair is closer than the unrelated one, at every layer
    for layer in (1, 3, 6):
        v = np.stack(model.run([Row(ids=i, dim=64, layer=layer) for i in ids]))
        assert v[0] @ v[1] > v[0] @ v[2]


def test_serves_dim64_layer6(minilm_dir: Path, live_server_factory) -> None:  # type: ignore[no-untyped-def]
    import httpx

    from mipic.service.app import create_app
    from mipic.service.settings import Settings

    srv = live_server_factory(create_app(Settings(model_dir=minilm_dir, provider="cpu",
                                                  bootstrap_default=False)))
    r = httpx.post(srv.url + "/embed?dim=64&layer=6", json={"inputs": SENTENCES}, timeout=30)
    assert r.status_code == 200
    body = r.json()
    assert body["model"] == "all-minilm-l6-v2@1" and body["dim"] == 64 and body["layer"] == 6
    emb = np.array(body["embeddings"])
    assert emb.shape == (4, 64)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    info = httpx.get(srv.url + "/info").json()
    assert info["hidden_size"] == 384 and info["num_layers"] == 6 and info["max_seq_length"] == 256
