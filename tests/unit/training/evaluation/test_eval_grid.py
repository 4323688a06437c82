import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from eval_fakes import RandomEncoder
from transformers import BertModel, PreTrainedTokenizerFast

from mipic.training.evaluation.encoders import AllLayersEncoder, BudgetEncoder, TorchBudgetEncoder
from mipic.training.evaluation.grid import default_dims, exit_pair_dims, run_grid
from mipic.training.evaluation.result import GridResult
from mipic.training.evaluation.suites import (
    ClassificationSuite,
    PairClassificationSuite,
    PairSimilaritySuite,
    RetrievalSuite,
    Suite,
)

TEXTS = [
    "the cat sat on the mat",
    "a dog ran fast",
    "the red car",
    "a blue bus ran slow",
    "good film",
    "bad film",
    "sport news",
    "the dog sat",
]


def _suites() -> list[Suite]:
    return [
        PairSimilaritySuite("sts", TEXTS[:4], TEXTS[4:], [1.0, 2.0, 3.0, 4.0]),
        PairClassificationSuite("pairs", TEXTS[:4], TEXTS[4:], [1, 0, 1, 0]),
        RetrievalSuite(
            "ret",
            {"q1": "cat", "q2": "bus"},
            {f"d{i}": t for i, t in enumerate(TEXTS)},
            {"q1": {"d0": 1}, "q2": {"d3": 1}},
        ),
        ClassificationSuite("cls", TEXTS, ["x", "y"] * 4, folds=2),
    ]


@pytest.fixture
def encoder(bert_and_tokenizer: tuple[BertModel, PreTrainedTokenizerFast]) -> TorchBudgetEncoder:
    return TorchBudgetEncoder(bert_and_tokenizer, max_length=16, batch_size=3)


def test_protocols(encoder: TorchBudgetEncoder) -> None:
    assert isinstance(encoder, BudgetEncoder) and isinstance(encoder, AllLayersEncoder)
    assert not isinstance(RandomEncoder(), AllLayersEncoder)
    assert (encoder.num_layers, encoder.hidden_size) == (2, 32)


def test_torch_encoder_matches_manual_pooling(
    encoder: TorchBudgetEncoder, bert_and_tokenizer: tuple[BertModel, PreTrainedTokenizerFast]
) -> None:
    model, tok = bert_and_tokenizer
    out = encoder.encode(TEXTS, layer=1, dim=8)
    assert out.shape == (len(TEXTS), 8)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)
    for i in (0, 5):  # one at a time, no padding: batched must equal single
        enc = tok([TEXTS[i]], return_tensors="pt")
        h = model(**enc, output_hidden_states=True).hidden_states[1][0].detach().numpy()
        v = h.mean(0)[:8]
        np.testing.assert_allclose(out[i], v / np.linalg.norm(v), atol=1e-5)


def test_torch_encoder_caches_one_pass(encoder: TorchBudgetEncoder, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = encoder._forward_all
    monkeypatch.setattr(encoder, "_forward_all", lambda texts: calls.append(len(texts)) or real(texts))
    full = encoder.encode_all_layers(TEXTS)
    assert full.shape == (2, len(TEXTS), 32)
    for layer in (1, 2):
        for dim in (4, 32):
            encoder.encode(TEXTS, layer, dim)
    assert calls == [len(TEXTS)]
    with pytest.raises(ValueError, match="layer"):
        encoder.encode(TEXTS, 3, 4)


def test_torch_encoder_restores_training_mode(
    bert_and_tokenizer: tuple[BertModel, PreTrainedTokenizerFast],
) -> None:
    model, tok = bert_and_tokenizer
    model.train()
    try:
        a = TorchBudgetEncoder((model, tok)).encode(TEXTS, 2, 32)
        b = TorchBudgetEncoder((model, tok)).encode(TEXTS, 2, 32)
        np.testing.assert_allclose(a, b, atol=1e-6)  # dropout off while encoding
        assert model.training
    finally:
        model.eval()


def test_run_grid_writes_outputs(encoder: TorchBudgetEncoder, tmp_path: Path) -> None:
    result = run_grid(encoder, _suites(), layers=[1, 2], dims=[4, 8, 32], out_dir=tmp_path)
    assert result.layers == [1, 2] and result.dims == [4, 8, 32]
    assert result.main_metrics == {"sts": "spearman", "pairs": "ap", "ret": "ndcg@10", "cls": "accuracy"}
    for suite, metric in [*result.main_metrics.items(), ("geometry", "uniformity"), ("ret", "recall@10")]:
        assert result.table(suite, metric).shape == (2, 3)
    assert set(result.scores["geometry"]) == {"alignment", "uniformity", "effective_rank", "isotropy"}

    data = json.loads((tmp_path / "grid.json").read_text())
    assert GridResult.from_dict(data).scores == result.scores
    md = (tmp_path / "grid.md").read_text()
    assert "## ret · ndcg@10 (main)" in md and "| layer | d=4 | d=8 | d=32 |" in md
    # one row per metric table, plus the two tables of the cross-exit summary and the exit pairs' one (d=32)
    assert md.count("\n| 2 | ") == sum(len(m) for m in result.scores.values()) + 3
    assert "## One index, any exit" in md and "## ret · index_ndcg@10" in md
    assert "## Queries at one exit, documents at another" in md and "d=32:" in md
    # every pair of exits at the widest dim (no 64 in this grid): the diagonal is the same budget, the last column
    # the last-layer index, and the JSON keeps the table
    pairs = np.asarray(result.exit_pairs["ret"]["32"])
    assert pairs.shape == (2, 2) and set(result.exit_pairs) == {"ret"}
    np.testing.assert_allclose(np.diag(pairs), result.table("ret", "ndcg@10")[:, -1])
    np.testing.assert_allclose(pairs[:, -1], result.table("ret", "index_ndcg@10")[:, -1])
    assert GridResult.from_dict(data).exit_pairs == result.exit_pairs
    pngs = sorted(p.name for p in tmp_path.glob("*.png"))
    assert pngs == [
        "heatmap_cls_accuracy.png",
        "heatmap_exit_pairs_d32.png",
        "heatmap_exits_cosine_to_last.png",
        "heatmap_pairs_ap.png",
        "heatmap_ret_index_ndcg_10.png",
        "heatmap_ret_ndcg_10.png",
        "heatmap_sts_spearman.png",
    ]
    np.testing.assert_allclose(result.table("exits", "cosine_to_last")[-1], 1.0, atol=1e-6)  # last layer vs itself
    assert all((tmp_path / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)

    by_budget = result.by_budget()
    assert set(by_budget) == {f"d{d}_l{ly}" for d in (4, 8, 32) for ly in (1, 2)}
    assert by_budget["d8_l2"]["ret/ndcg@10"] == result.value("ret", "ndcg@10", 2, 8)


def test_grid_without_all_layers_calls_encode_per_budget() -> None:
    enc = RandomEncoder(num_layers=3, hidden_size=8)
    result = run_grid(enc, _suites(), layers=[1, 3], dims=[2, 8], geometry=False)
    assert sorted(enc.calls) == [(1, 2), (1, 8), (3, 2), (3, 8)]
    assert "geometry" not in result.scores


def test_exit_pairs_are_queries_at_one_layer_against_documents_at_another() -> None:
    assert exit_pair_dims([16, 32, 64, 128, 384]) == [64, 384] and exit_pair_dims([4, 8]) == [8]
    enc = RandomEncoder(num_layers=3, hidden_size=8)
    suite = _suites()[2]
    result = run_grid(enc, [suite], layers=[1, 2, 3], dims=[4, 8], geometry=False)
    pairs = np.asarray(result.exit_pairs["ret"]["8"])
    assert pairs.shape == (3, 3) and list(result.exit_pairs["ret"]) == ["8"]

    def at(layer: int) -> Any:
        return lambda batch: enc.encode(batch, layer, 8)

    for a, b in [(1, 2), (3, 1), (2, 2)]:  # recomputed by hand: queries at layer a, documents at layer b
        assert pairs[a - 1, b - 1] == pytest.approx(suite.evaluate_index(at(a), at(b))["index_ndcg@10"])
    assert not run_grid(enc, [suite], layers=[2], dims=[8], geometry=False).exit_pairs  # one layer: no pairs
    assert not run_grid(enc, [suite], layers=[1, 2], dims=[8], geometry=False, cross=False).exit_pairs
    old = result.to_dict()
    del old["exit_pairs"]  # a grid.json written before exit pairs existed still loads
    assert GridResult.from_dict(old).exit_pairs == {}


def test_grid_defaults_and_validation() -> None:
    assert default_dims(384) == [16, 32, 64, 128, 256, 384]
    assert default_dims(32) == [16, 32]
    enc = RandomEncoder(num_layers=2, hidden_size=32)
    result = run_grid(enc, _suites()[:1], geometry=False)
    assert result.layers == [1, 2] and result.dims == [16, 32]
    with pytest.raises(ValueError, match="layers must be"):
        run_grid(enc, _suites(), layers=[3])
    with pytest.raises(ValueError, match="unique"):
        run_grid(enc, [*_suites(), _suites()[0]])
