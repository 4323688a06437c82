import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mipic.training.evaluation.suites import (
    geometry_suite,
    load_classification,
    load_pair_classification,
    load_pair_similarity,
    load_retrieval,
)


def _write(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _onehot(vocab: list[str]) -> Any:
    table = {t: np.eye(len(vocab))[i] for i, t in enumerate(vocab)}
    return lambda texts: np.stack([table[t] for t in texts])


def test_pair_files(tmp_path: Path) -> None:
    rows = [{"text1": f"a{i}", "text2": f"b{i}", "score": i, "label": i % 2} for i in range(10)]
    sim = load_pair_similarity(_write(tmp_path / "sts.jsonl", rows))
    assert sim.name == "sts" and sim.scores[3] == 3.0 and len(sim.texts()) == 20
    cls = load_pair_classification(_write(tmp_path / "pc.jsonl", rows), max_items=4, seed=1)
    assert len(cls.labels) == 4
    assert cls.positive_pairs() == [
        (a, b) for a, b, y in zip(cls.text1, cls.text2, cls.labels, strict=True) if y
    ]
    with pytest.raises(ValueError, match="label must be 0 or 1"):
        load_pair_classification(_write(tmp_path / "bad.jsonl", [{"text1": "x", "text2": "y", "label": 2}]))
    with pytest.raises(ValueError, match=r"missing field\(s\) \['score'\]"):
        load_pair_similarity(_write(tmp_path / "bad2.jsonl", [{"text1": "x", "text2": "y"}]))


def test_classification_file(tmp_path: Path) -> None:
    rows = [{"text": f"t{i}", "label": "xy"[i % 2]} for i in range(12)]
    suite = load_classification(_write(tmp_path / "topics.jsonl", rows))
    embed = _onehot(suite.texts())
    assert suite.evaluate(embed)["accuracy"] <= 1.0
    assert suite.main_metric == "accuracy"


def test_retrieval_dir_and_caps(tmp_path: Path) -> None:
    d = tmp_path / "ret"
    d.mkdir()
    _write(d / "queries.jsonl", [{"id": f"q{i}", "text": f"query {i}"} for i in range(6)])
    _write(d / "corpus.jsonl", [{"id": f"d{i}", "text": f"doc {i}"} for i in range(20)])
    _write(d / "qrels.jsonl", [{"query_id": f"q{i}", "doc_id": f"d{i}", "score": 1} for i in range(5)])
    suite = load_retrieval(d)
    assert list(suite.queries) == [f"q{i}" for i in range(5)]  # q5 has no judgement
    assert len(suite.corpus) == 20

    # Query i and doc i share a one-hot vector: perfect retrieval.
    def embed(texts: list[str]) -> np.ndarray:
        return np.stack([np.eye(20)[int(t.split()[1])] for t in texts])

    assert suite.evaluate(embed) == {"ndcg@10": pytest.approx(1.0), "recall@10": pytest.approx(1.0)}
    capped = load_retrieval(d, max_items=2, seed=0)
    assert len(capped.queries) == 2
    relevant = {f"d{q[1:]}" for q in capped.queries}
    assert relevant <= set(capped.corpus) and len(capped.corpus) == 4
    assert len(capped.positive_pairs()) == 2


def test_geometry_suite_collects_texts_and_pairs(tmp_path: Path) -> None:
    rows = [{"text1": f"a{i}", "text2": f"b{i}", "label": i % 2} for i in range(10)]
    pc = load_pair_classification(_write(tmp_path / "pc.jsonl", rows))
    geo = geometry_suite([pc], max_texts=6, max_pairs=3)
    assert len(geo.sample) == 6 and len(geo.pairs) == 3
    metrics = geo.evaluate(_onehot(pc.texts()))
    assert metrics["effective_rank"] == pytest.approx(6.0)
    assert metrics["alignment"] == pytest.approx(2.0)
