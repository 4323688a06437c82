"""A tiny random BERT with a word-level tokenizer built in memory (a uniquely named helper module)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace
from tokenizers.processors import TemplateProcessing
from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

from mipic.training.evaluation.pooling import truncate_normalize

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
WORDS = [
    "the",
    "a",
    "cat",
    "dog",
    "sat",
    "on",
    "mat",
    "ran",
    "fast",
    "slow",
    "red",
    "blue",
    "car",
    "bus",
    "news",
    "sport",
    "film",
    "good",
    "bad",
    "query",
    "doc",
]


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {w: i for i, w in enumerate([*SPECIALS, *WORDS])}
    tok = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = Whitespace()
    tok.post_processor = TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]"
    )


def tiny_bert(seed: int = 0) -> BertModel:
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(SPECIALS) + len(WORDS),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    return BertModel(config).eval()


class RandomEncoder:
    """A BudgetEncoder without ``encode_all_layers``: a fixed random vector per (text, layer)."""

    def __init__(self, num_layers: int = 2, hidden_size: int = 8) -> None:
        self.num_layers = num_layers
        self.hidden_size = hidden_size
        self.calls: list[tuple[int, int]] = []

    def encode(self, texts: Sequence[str], layer: int, dim: int) -> np.ndarray:
        self.calls.append((layer, dim))
        rows = [
            np.random.default_rng(abs(hash((t, layer))) % 2**32).standard_normal(self.hidden_size)
            for t in texts
        ]
        return truncate_normalize(np.stack(rows), dim)
