"""The tokenizer: token-id inputs, per-request truncation side and refusal, TEI-style tokens and decode."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mipic.modeldir.errors import InputTooLong, InvalidRequest
from mipic.modeldir.tokenizer import TextTokenizer


@pytest.fixture(scope="module")
def tok(tiny_model_dir: Path) -> TextTokenizer:
    return TextTokenizer(tiny_model_dir / "tokenizer.json", max_length=6)


def test_ids_are_used_as_given_and_equal_the_texts_encoding(tok: TextTokenizer) -> None:
    text_ids = tok.encode(["the cat"])[0].ids
    assert text_ids.tolist() == [2, 5, 29, 3]  # [CLS] the cat [SEP]
    mixed = tok.encode([[2, 5, 29, 3], "the cat"])
    assert mixed[0].ids.tolist() == mixed[1].ids.tolist() == [2, 5, 29, 3]
    assert mixed[0].ids.dtype == np.int64


def test_truncation_side_and_refusal_per_request(tok: TextTokenizer) -> None:
    text = "the quick brown fox jumps over the lazy dog"  # 9 words + 2 specials > 6
    right = tok.encode([text])[0]
    left = tok.encode([text], direction="left")[0]
    assert right.truncated and left.truncated and right.length == left.length == 6
    # right keeps the start ([CLS] the quick brown fox [SEP]); left keeps the end
    assert tok.decode(right.ids.tolist()) == "the quick brown fox"
    assert tok.decode(left.ids.tolist()) == "over the lazy dog"
    with pytest.raises(InputTooLong, match=r"input\[1\] is longer than the maximum of 6 tokens") as exc:
        tok.encode(["ok", text], truncate=False)
    assert exc.value.field == "input[1]"  # the key: each HTTP surface says its own name for it
    ids = list(range(5, 13))  # 8 ids
    assert tok.encode([ids])[0].ids.tolist() == ids[:6]
    assert tok.encode([ids], direction="left")[0].ids.tolist() == ids[-6:]
    with pytest.raises(InputTooLong, match="8 token ids; the maximum is 6"):
        tok.encode([ids], truncate=False)


@pytest.mark.parametrize("bad", [[], [5, -1], [5, 44], [2**70]])
def test_ids_outside_the_vocabulary_are_refused(tok: TextTokenizer, bad: list[int]) -> None:
    assert tok.vocab_size == 44
    with pytest.raises(InvalidRequest, match="empty list" if not bad else "outside the vocabulary"):
        tok.encode([bad])
    with pytest.raises(InvalidRequest):
        tok.decode(bad)


def test_tokens_have_tei_byte_offsets(tok: TextTokenizer) -> None:
    tokens = tok.tokens("é the cat")
    assert [(t.id, t.text, t.special, t.start, t.stop) for t in tokens] == [
        (2, "[CLS]", True, None, None),
        (1, "é", False, 0, 2),  # two UTF-8 bytes
        (5, "the", False, 3, 6),
        (29, "cat", False, 7, 10),
        (3, "[SEP]", True, None, None),
    ]
    assert [t.id for t in tok.tokens("the cat", add_special_tokens=False)] == [5, 29]
    assert tok.decode([2, 5, 29, 3], skip_special_tokens=False) == "[CLS] the cat [SEP]"
