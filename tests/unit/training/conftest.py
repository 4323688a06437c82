"""Fixtures shared by the training tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.conftest import random_heads


@pytest.fixture(scope="module")
def heads_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Well-conditioned random exit heads for the tiny model, saved where ``model.heads_init`` can point."""
    from mipic.modeldir.heads import HEADS_FILE, save_heads

    path = tmp_path_factory.mktemp("heads") / HEADS_FILE
    save_heads(path, random_heads())
    return path
