"""Fast tokenization with the ``tokenizers`` library; truncation or rejection of long inputs.

Inputs are texts, or token-id lists in this model's own vocabulary (used as given: they already carry
the special tokens a client got from tokenizing, as text-embeddings-inference treats them).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from tokenizers import Tokenizer

from mipic.modeldir.errors import InputTooLong, InvalidRequest

Direction = Literal["right", "left"]


@dataclass(frozen=True)
class Encoded:
    """Token ids of one input, without padding."""

    ids: np.ndarray  # (T,) int64
    truncated: bool

    @property
    def length(self) -> int:
        return int(self.ids.shape[0])


@dataclass(frozen=True)
class Token:
    """One token of a tokenized text; ``start``/``stop`` are UTF-8 byte offsets (None for special tokens)."""

    id: int
    text: str
    special: bool
    start: int | None
    stop: int | None


class TextTokenizer:
    """Thread-safe wrapper; ``encode`` is called from a worker pool, never on the event loop.

    Two instances of the same tokenizer, one truncating on the right (the default) and one on the left,
    because the truncation side is a property of a ``tokenizers.Tokenizer``, not of a call.
    """

    def __init__(self, path: Path, max_length: int, truncate: bool = True) -> None:
        self.max_length = max_length
        self.truncate = truncate
        self._by_direction: dict[str, Tokenizer] = {}
        for direction in ("right", "left"):
            tok = Tokenizer.from_file(str(path))
            tok.no_padding()
            tok.enable_truncation(max_length=max_length, direction=direction)
            self._by_direction[direction] = tok
        self._tok = self._by_direction["right"]

    @property
    def vocab_size(self) -> int:
        return int(self._tok.get_vocab_size())

    def encode(
        self,
        inputs: Sequence[str | Sequence[int]],
        *,
        truncate: bool | None = None,
        direction: Direction = "right",
    ) -> list[Encoded]:
        """Texts (tokenized with special tokens) or token-id lists (checked against the vocabulary) → ids.

        Longer than ``max_length``: cut on ``direction``'s side, or :class:`InputTooLong` when ``truncate``
        (default: this tokenizer's setting) is false. Errors name the item by its key, ``input[i]``.
        """
        keep = self.truncate if truncate is None else truncate
        texts = [(i, t) for i, t in enumerate(inputs) if isinstance(t, str)]
        out: list[Encoded | None] = [None] * len(inputs)
        if texts:
            encodings = self._by_direction[direction].encode_batch([t for _, t in texts], add_special_tokens=True)
            for (i, _), enc in zip(texts, encodings, strict=True):
                truncated = bool(enc.overflowing)
                if truncated and not keep:
                    raise InputTooLong(
                        f"input[{i}] is longer than the maximum of {self.max_length} tokens", field=f"input[{i}]"
                    )
                out[i] = Encoded(ids=np.asarray(enc.ids, dtype=np.int64), truncated=truncated)
        for i, item in enumerate(inputs):
            if not isinstance(item, str):
                out[i] = self._from_ids(item, keep, direction, f"input[{i}]")
        return [e for e in out if e is not None]

    def _from_ids(self, ids: Sequence[int], keep: bool, direction: Direction, field: str) -> Encoded:
        self.check_ids(ids, field)
        arr = np.asarray(ids, dtype=np.int64)
        if arr.shape[0] <= self.max_length:
            return Encoded(ids=arr, truncated=False)
        if not keep:
            raise InputTooLong(f"{field} has {arr.shape[0]} token ids; the maximum is {self.max_length}", field=field)
        cut = arr[: self.max_length] if direction == "right" else arr[-self.max_length :]
        return Encoded(ids=cut, truncated=True)

    def check_ids(self, ids: Sequence[int], field: str) -> None:
        """Refuse an empty list or an id outside the vocabulary (the embedding graph would fail on it); ``field``:
        the list's key (``input[2]``, ``ids``)."""
        if len(ids) == 0:
            raise InvalidRequest(f"{field} is an empty list of token ids", field=field)
        vocab = self.vocab_size
        for j, token in enumerate(ids):
            if not 0 <= token < vocab:
                raise InvalidRequest(
                    f"{field}[{j}]: token id {token} is outside the vocabulary (0..{vocab - 1})", field=field
                )

    def tokens(self, text: str, add_special_tokens: bool = True) -> list[Token]:
        """Every token of ``text`` with its id, text and UTF-8 byte offsets (text-embeddings-inference's
        ``/tokenize``); truncated like ``encode``."""
        enc = self._tok.encode(text, add_special_tokens=add_special_tokens)
        # tokenizers gives character offsets for a Python str; clients of /tokenize expect byte offsets
        byte_at = np.concatenate([[0], np.cumsum([len(c.encode("utf-8")) for c in text])]).astype(int)
        out: list[Token] = []
        for token_id, (start, stop), special, piece in zip(
            enc.ids, enc.offsets, enc.special_tokens_mask, enc.tokens, strict=True
        ):
            if special:
                out.append(Token(id=int(token_id), text=piece, special=True, start=None, stop=None))
            else:
                out.append(Token(id=int(token_id), text=text[start:stop], special=False,
                                 start=int(byte_at[start]), stop=int(byte_at[stop])))
        return out

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True, field: str = "ids") -> str:
        self.check_ids(ids, field)
        return str(self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens))
