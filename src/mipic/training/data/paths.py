"""Where downloaded archives, extracted JSONL and generated eval suites live."""

from __future__ import annotations

import os
from pathlib import Path

DATA_DIR_ENV = "MIPIC_DATA_DIR"


def resolve_data_dir(data_dir: str | Path | None = None) -> Path:
    """``data_dir`` if given, else ``$MIPIC_DATA_DIR``, else ``~/.cache/mipic/data``."""
    if data_dir is not None:
        return Path(data_dir).expanduser()
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "mipic" / "data"


def archives_dir(data_dir: Path) -> Path:
    return data_dir / "archives"


def extracted_dir(data_dir: Path) -> Path:
    return data_dir / "extracted"


def suites_dir(data_dir: Path) -> Path:
    return data_dir / "suites"
