"""The packaged all-MiniLM-L6-v2: export, parity with sentence-transformers, serving /embed?dim=64&layer=6."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from tests.conftest import make_settings

pytestmark = pytest.mark.integration

SENTENCES = [
    "A man is playing a guitar.",
    "Someone plays an instrument on stage.",
    "The stock market fell sharply on Monday.",
    "Matryoshka embeddings nest smaller vectors inside larger ones.",
]


def test_full_budget_matches_sentence_transformers(minilm_dir: Path, tmp_path: Path) -> None:
    """Without heads the read-out is sentence-transformers' own (mean pooling of the encoder the default model
    was exported from: base + merged adapter); with the default heads the full budget is a rotation of it (the
    last layer's head is orthogonal, no bias): the same similarities to 1e-5."""
    from sentence_transformers import SentenceTransformer

    from mipic.modeldir.manifest import load_manifest
    from mipic.modeldir.runner import LoadedModel, Row
    from mipic.training.default_assets import DEFAULT_HEADS_META
    from mipic.training.release import default_encoder

    encoder = default_encoder(json.loads(DEFAULT_HEADS_META.read_text()), tmp_path / "encoder")
    st = SentenceTransformer(str(encoder), device="cpu")
    ref = st.encode(SENTENCES, normalize_embeddings=True)
    ref64 = st.encode(SENTENCES, normalize_embeddings=True, truncate_dim=64)
    model = LoadedModel(minilm_dir, provider="cpu")
    ids = [e.ids for e in model.tokenizer.encode(SENTENCES)]
    pooled = model.pool_all_layers(ids)[5]
    np.testing.assert_allclose(model.embed_pooled(pooled, 6, 384, heads=False), ref, atol=1e-5)
    ref64 = ref64 / np.linalg.norm(ref64, axis=1, keepdims=True)
    np.testing.assert_allclose(model.embed_pooled(pooled, 6, 64, heads=False), ref64, atol=1e-5)
    got = np.stack(model.run([Row(ids=i, dim=384, layer=6) for i in ids]))
    np.testing.assert_allclose(got @ got.T, ref @ ref.T, atol=1e-5)
    assert np.abs(got - ref).max() > 1e-3  # rotated: not the same coordinates
    manifest = load_manifest(minilm_dir)
    assert manifest.heads is not None and manifest.heads.method in {"distill", "trained"}
    assert manifest.budgets is not None and len(manifest.budgets.rows) == 36
    # semantics survive: the paraphrase pair is closer than the unrelated one, at every layer
    for layer in (1, 3, 6):
        v = np.stack(model.run([Row(ids=i, dim=64, layer=layer) for i in ids]))
        assert v[0] @ v[1] > v[0] @ v[2]


def test_serves_dim64_layer6(minilm_dir: Path, live_server_factory) -> None:  # type: ignore[no-untyped-def]
    import httpx

    from mipic.service.app import create_app

    srv = live_server_factory(create_app(make_settings(minilm_dir)))
    r = httpx.post(srv.url + "/embed?dim=64&layer=6", json={"inputs": SENTENCES}, timeout=30)
    assert r.status_code == 200
    body = r.json()
    assert body["model"] == "all-minilm-l6-v2@1" and body["dim"] == 64 and body["layer"] == 6
    emb = np.array(body["embeddings"])
    assert emb.shape == (4, 64)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    info = httpx.get(srv.url + "/info").json()
    assert info["hidden_size"] == 384 and info["num_layers"] == 6 and info["max_seq_length"] == 256
    assert info["heads"]["method"] in {"distill", "trained"} and info["pareto_budgets"]
    budgets = httpx.get(srv.url + "/budgets", params={"min_quality": 0.7}).json()
    assert budgets["available"] and budgets["recommended"]["quality"] >= 0.7
    assert budgets["recommended"]["relative_cost"] < 0.5  # a shallow exit already reaches 0.7
    # one space for every exit: layer-3 queries land next to their own layer-6 vectors
    space = info["exit_space"]
    assert space["shared"] is True and space["worst_cosine"] >= 0.5 and budgets["exit_space"] == space
    row = next(b for b in budgets["budgets"] if (b["dim"], b["layer"]) == (64, 3))
    full = next(b for b in budgets["budgets"] if (b["dim"], b["layer"]) == (64, 6))
    assert row["cosine_to_last"] > 0.85 and row["index_quality"] >= 0.9 * full["index_quality"]
    shallow = np.array(httpx.post(srv.url + "/embed?dim=64&layer=3", json={"inputs": SENTENCES}, timeout=30)
                       .json()["embeddings"])
    cos = shallow @ emb.T  # (4, 4): each layer-3 vector against every layer-6 vector
    # measured 0.65 / 0.70 / 0.90 / 0.77 (short sentences sit below the suites' mean of 0.89); the previous
    # default, whose exits did not share a space, gave about 0.0
    assert np.all(np.diag(cos) > 0.6)
    assert np.all(np.argmax(cos, axis=1) == np.arange(len(SENTENCES)))


def test_save_default_ships_the_adapter_with_the_heads(minilm_dir: Path, tmp_path: Path) -> None:
    """`mipic heads save-default --adapter` stores the adapter beside the heads and names it in the metadata
    (what bootstrap merges); without it, a stored adapter is removed (heads on the untouched base)."""
    from mipic.training.default_assets import ADAPTER_FILES, DEFAULT_ADAPTER_DIR
    from mipic.training.release import save_default_heads

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    for i, name in enumerate(ADAPTER_FILES):
        (adapter / name).write_bytes(bytes([i]) * 10)
    heads, meta = tmp_path / "assets" / "h.npz", tmp_path / "assets" / "h.json"
    heads.parent.mkdir()
    save_default_heads(minilm_dir, heads, meta, adapter=adapter, reproduce="scripts/train_default_model.sh")
    stored = json.loads(meta.read_text())
    assert stored["adapter"]["path"] == DEFAULT_ADAPTER_DIR and stored["reproduce"] == "scripts/train_default_model.sh"
    for i, name in enumerate(ADAPTER_FILES):
        assert (heads.parent / DEFAULT_ADAPTER_DIR / name).read_bytes() == bytes([i]) * 10
    assert len(stored["budgets"]["rows"]) == 36 and stored["calibration"]
    save_default_heads(minilm_dir, heads, meta)
    assert "adapter" not in json.loads(meta.read_text())
    assert not (heads.parent / DEFAULT_ADAPTER_DIR).exists()
