"""WordNet synsets (lemmas, gloss, examples) from Debian's ``wordnet-base``, when installed."""

from __future__ import annotations

import re
from pathlib import Path

from mipic.training.data.records import Document

SOURCE = "wordnet"
WORDNET_DIR = Path("/usr/share/wordnet")
_ADJ_MARKER = re.compile(r"\([a-z]+\)$")  # "long(a)": syntactic marker on adjectives
_POS_FILES = {"n": "data.noun", "v": "data.verb", "a": "data.adj", "r": "data.adv"}


def wordnet_available(root: Path = WORDNET_DIR) -> bool:
    return all((root / f).is_file() for f in _POS_FILES.values())


def parse_synset_line(line: str, pos: str) -> Document | None:
    """One ``data.*`` line → Document(title=lemmas, subtitle=definition, body=examples one per line).

    Format: ``offset lex_filenum ss_type w_cnt(hex) word lex_id ... | gloss``; the gloss is
    ``definition; "example"; "example"``. License header lines start with spaces and are skipped.
    """
    if not line or line.startswith(" ") or " | " not in line:
        return None
    head, gloss = line.rstrip("\n").split(" | ", 1)
    fields = head.split()
    w_cnt = int(fields[3], 16)
    lemmas = [_ADJ_MARKER.sub("", w).replace("_", " ") for w in fields[4 : 4 + 2 * w_cnt : 2]]
    definitions: list[str] = []
    examples: list[str] = []
    for part in gloss.split(";"):
        part = part.strip()
        if part.startswith('"'):
            examples.append(part.strip('"').strip())
        elif part:
            definitions.append(part)
    return Document(
        source=SOURCE,
        doc_id=f"{pos}{fields[0]}",
        title=", ".join(lemmas),
        subtitle="; ".join(definitions),
        body="\n".join(e for e in examples if e),
        label=pos,
    )


def parse_wordnet(root: Path = WORDNET_DIR) -> list[Document]:
    docs: list[Document] = []
    for pos, fname in _POS_FILES.items():
        with (root / fname).open(encoding="utf-8", errors="replace") as f:
            for line in f:
                doc = parse_synset_line(line, pos)
                if doc is not None:
                    docs.append(doc)
    return docs
