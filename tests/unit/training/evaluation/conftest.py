"""Fixtures for the evaluation tests: a tiny random BERT and its tokenizer (no download)."""

from __future__ import annotations

import pytest
from eval_fakes import tiny_bert, tiny_tokenizer
from transformers import BertModel, PreTrainedTokenizerFast


@pytest.fixture(scope="module")
def bert_and_tokenizer() -> tuple[BertModel, PreTrainedTokenizerFast]:
    return tiny_bert(), tiny_tokenizer()
