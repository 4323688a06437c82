"""Model repository: register, promote, rollback, and refusal of broken versions."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from mipic.modeldir.manifest import ManifestError
from mipic.modeldir.repository import ModelRepository, RepositoryError, resolve_model_dir


@pytest.fixture
def repo(tmp_path: Path, tiny_model_dir: Path, tiny_model_v2_dir: Path) -> ModelRepository:
    r = ModelRepository(tmp_path / "tiny")
    r.register(tiny_model_dir)
    r.register(tiny_model_v2_dir)
    return r


def test_register_promote_rollback(repo: ModelRepository) -> None:
    assert repo.versions() == ["1", "2"]
    assert repo.current() is None
    repo.promote("1")
    repo.promote("2")
    assert repo.current() == "2"
    assert resolve_model_dir(repo.path)[0] == repo.path / "2"
    assert repo.rollback() == "1"
    assert repo.current() == "1"
    with pytest.raises(RepositoryError, match="no earlier promoted version"):
        repo.rollback()
    assert repo.next_version() == "3"


def test_refuses_unknown_duplicate_and_corrupt_versions(repo: ModelRepository, tiny_model_dir: Path) -> None:
    repo.promote("1")
    with pytest.raises(ManifestError, match=r"no manifest\.json"):
        repo.promote("9")
    with pytest.raises(RepositoryError, match="already exists"):
        repo.register(tiny_model_dir)
    with pytest.raises(RepositoryError, match="invalid version name"):
        repo.promote("../1")
    bad = repo.path / "2" / "layer_02.onnx"
    bad.write_bytes(bad.read_bytes()[:-10])
    with pytest.raises(ManifestError, match="checksum mismatch"):
        repo.promote("2")
    assert repo.current() == "1"  # untouched


def test_manifest_version_must_match_directory(repo: ModelRepository) -> None:
    shutil.copytree(repo.path / "2", repo.path / "7")
    with pytest.raises(ManifestError, match="manifest says version '2'"):
        repo.promote("7")
