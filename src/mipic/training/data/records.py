"""The one record type every corpus parser yields, and its JSONL round trip."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class Document:
    """One source document. Fields a source lacks are empty strings.

    ``doc_id`` is unique within ``source`` and stable across versions of this code: the train/eval
    split is a function of ``(source, doc_id)`` only.
    """

    source: str
    doc_id: str
    title: str = ""
    subtitle: str = ""
    body: str = ""
    label: str = ""


def write_documents(path: Path, docs: Iterable[Document]) -> None:
    """Write ``docs`` as JSONL atomically (a half-written cache is never read back)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for doc in docs:
            f.write(json.dumps(asdict(doc), ensure_ascii=False) + "\n")
    tmp.replace(path)


def read_documents(path: Path) -> Iterator[Document]:
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield Document(**json.loads(line))
