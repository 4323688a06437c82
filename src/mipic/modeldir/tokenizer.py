"""Fast tokenization with the ``tokenizers`` library; truncation or rejection of long inputs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from mipic.modeldir.errors import InputTooLong


@dataclass(frozen=True)
class Encoded:
    """Token ids of one input, without padding."""

    ids: np.ndarray  # (T,) int64
    truncated: bool

    @property
    def length(self) -> int:
        return int(self.ids.shape[0])


class TextTokenizer:
    """Thread-safe wrapper; ``encode`` is called from a worker pool, never on the event loop."""

    def __init__(self, path: Path, max_length: int, truncate: bool = True) -> None:
        self.max_length = max_length
        self.truncate = truncate
        self._tok = Tokenizer.from_file(str(path))
        self._tok.no_padding()
        self._tok.enable_truncation(max_length=max_length)

    @property
    def vocab_size(self) -> int:
        return int(self._tok.get_vocab_size())

    def encode(self, texts: list[str]) -> list[Encoded]:
        encodings = self._tok.encode_batch(texts, add_special_tokens=True)
        out: list[Encoded] = []
        for i, enc in enumerate(encodings):
            truncated = bool(enc.overflowing)
            if truncated and not self.truncate:
                raise InputTooLong(
                    f"input[{i}] is longer than the maximum of {self.max_length} tokens", param="input"
                )
            out.append(Encoded(ids=np.asarray(enc.ids, dtype=np.int64), truncated=truncated))
        return out
