import json
from pathlib import Path

import pytest
from data_fakes import all_texts

from mipic.training.data import (
    DataUnavailableError,
    load_documents,
    load_pairs,
    load_sentences,
    split_documents,
    split_of,
    write_builtin_suites,
)
from mipic.training.data.records import Document
from mipic.training.data.text import split_sentences, text_key


def _rows(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_split_is_seeded_and_order_free() -> None:
    docs = [Document("s", str(i)) for i in range(2000)]
    evals = [d for d in docs if split_of(d) == "eval"]
    assert 300 < len(evals) < 500  # ~20 %
    assert evals == [d for d in reversed(docs) if split_of(d) == "eval"][::-1]
    assert evals != [d for d in docs if split_of(d, split_seed=1) == "eval"]


def test_documents_are_cached_as_jsonl(fake_data_dir: Path) -> None:
    docs = load_documents("news", fake_data_dir)
    assert len(docs) == 120
    assert (fake_data_dir / "extracted" / "news-0.12.0.jsonl").is_file()


def test_sentences_deterministic_and_split_apart(fake_data_dir: Path) -> None:
    train = load_sentences(None, seed=3, split="train", data_dir=fake_data_dir)
    assert train == load_sentences(None, seed=3, split="train", data_dir=fake_data_dir)
    assert train != load_sentences(None, seed=4, split="train", data_dir=fake_data_dir)
    assert load_sentences(5, seed=3, data_dir=fake_data_dir) == train[:5]
    evals = load_sentences(None, split="eval", data_dir=fake_data_dir)
    assert train and evals
    assert not {text_key(s) for s in train} & {text_key(s) for s in evals}
    assert len({text_key(s) for s in train}) == len(train)


def test_train_drops_texts_that_also_occur_in_eval(fake_data_dir: Path) -> None:
    # The fake review file holds every snippet twice, under two row ids, so some texts have one
    # copy in each split: the train copy must be filtered out.
    docs = load_documents("rotten", fake_data_dir)
    eval_keys = {text_key(d.body) for d in split_documents(docs, "eval")}
    train_docs = split_documents(docs, "train")
    assert eval_keys & {text_key(d.body) for d in train_docs}  # the case is exercised
    train = load_sentences(None, data_dir=fake_data_dir, sources=["rotten"])
    assert train and not eval_keys & {text_key(s) for s in train}


def test_pairs(fake_data_dir: Path) -> None:
    pairs = load_pairs(data_dir=fake_data_dir)
    kinds = {("Subtitle" in b) for _, b in pairs}
    assert kinds == {True, False}  # both title↔subtitle and title↔first sentence
    assert all(a and b and a != b for a, b in pairs)
    eval_pairs = load_pairs(data_dir=fake_data_dir, split="eval")
    assert not {a for a, _ in pairs} & {a for a, _ in eval_pairs}
    assert load_pairs(4, seed=1, data_dir=fake_data_dir) == load_pairs(seed=1, data_dir=fake_data_dir)[:4]
    with pytest.raises(ValueError, match="needs WordNet"):
        load_pairs(data_dir=fake_data_dir, kinds=["gloss_example"])


def test_builtin_suites_are_held_out(fake_data_dir: Path) -> None:
    files = write_builtin_suites(fake_data_dir, size=10, seed=0)
    assert files.root.is_dir()
    topics = _rows(files.classification["bbc_topics"])
    sentiment = _rows(files.classification["rt_sentiment"])
    pairs = _rows(files.pair_labels["news_title_subtitle"])
    retrieval = files.retrieval["news_title_body"]
    queries, corpus, qrels = (_rows(retrieval / f) for f in ("queries.jsonl", "corpus.jsonl", "qrels.jsonl"))
    assert 0 < len(topics) <= 10 and {r["label"] for r in sentiment} <= {"fresh", "rotten"}
    assert {r["label"] for r in pairs} == {0, 1}
    assert len(queries) == len(qrels) and len(corpus) >= len(queries)
    doc_ids = {r["id"] for r in corpus}
    assert all(r["doc_id"] in doc_ids for r in qrels)

    eval_texts = all_texts([*topics, *sentiment, *pairs, *queries, *corpus])
    eval_units = {text_key(u) for t in eval_texts for u in [t, *split_sentences(t)]}
    train_units = {text_key(s) for s in load_sentences(None, data_dir=fake_data_dir)}
    train_units |= {text_key(t) for p in load_pairs(data_dir=fake_data_dir) for t in p}
    assert not eval_units & train_units
    # Written once: a second call reuses the files.
    mtime = files.classification["bbc_topics"].stat().st_mtime_ns
    assert write_builtin_suites(fake_data_dir, size=10, seed=0) == files
    assert files.classification["bbc_topics"].stat().st_mtime_ns == mtime


@pytest.mark.integration
def test_real_corpora_download_and_split() -> None:
    try:
        train = load_sentences(20_000, seed=0)
    except DataUnavailableError as exc:
        pytest.skip(f"corpus download unavailable: {exc}")
    assert len(train) == 20_000
    files = write_builtin_suites(size=300)
    assert len(_rows(files.classification["bbc_topics"])) == 300
