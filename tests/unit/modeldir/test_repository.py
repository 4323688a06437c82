"""Model repository: register, promote, rollback, and refusal of broken versions."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from mipic.modeldir.manifest import ManifestError
from mipic.modeldir.repository import ModelRepository, PointerError, RepositoryError, resolve_model_dir


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


# A CURRENT that cannot be followed: (content, words the one-line message must contain)
BAD_POINTERS = [
    (None, "has no CURRENT pointer"),
    (b"", "CURRENT is empty"),
    (b"  \n", "CURRENT is empty"),
    (b"\xff\xfe1\n", "CURRENT is not UTF-8 text"),
    (b"../../etc\n", "invalid version '../../etc'"),
    (b"..\n", "invalid version '..'"),
    (b"9\n", "names version '9', which is not in the repository"),
    (b"1" * 5000 + b"\n", "larger than 256 bytes"),
]


@pytest.mark.parametrize(("content", "words"), BAD_POINTERS, ids=["missing", "empty", "blank", "non-utf8",
                                                                  "traversal", "dotdot", "unknown", "huge"])
def test_a_bad_current_is_one_clear_error_without_server_paths(repo: ModelRepository, content: bytes | None,
                                                                words: str) -> None:
    repo.promote("1")
    pointer = repo.path / "CURRENT"
    if content is None:
        pointer.unlink()
    else:
        pointer.write_bytes(content)
    with pytest.raises(PointerError) as exc:
        repo.current_dir()
    message = str(exc.value)
    assert words in message and message.startswith("repository 'tiny'")
    assert str(repo.path.parent) not in message and "\n" not in message
    state = repo.pointer_state()  # the watcher's view: no exception, the same reason
    assert state.target is None and state.error == message
    assert state.raw == (None if content is None else content[:257])


def test_pointer_state_follows_a_valid_current(repo: ModelRepository) -> None:
    repo.promote("2")
    state = repo.pointer_state()
    assert (state.raw, state.target, state.error) == (b"2\n", repo.path / "2", None)


def test_current_and_history_are_fsynced_before_the_rename(repo: ModelRepository,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Crash safety: each temp file's data reaches the disk before it replaces CURRENT/HISTORY, and the
    directory (the rename itself) after."""
    import os

    from mipic.modeldir import repository

    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src: object, dst: object) -> None:
        events.append(("replace", f"{src} -> {dst}"))
        real_replace(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(repository.os, "fsync", fsync)
    monkeypatch.setattr(repository.os, "replace", replace)
    repo.promote("1")
    repo.promote("2")
    repo.rollback()
    replaces = [(i, e[1]) for i, e in enumerate(events) if e[0] == "replace"]
    assert len(replaces) == 6  # CURRENT and HISTORY, three times
    for i, what in replaces:
        tmp, dst = what.split(" -> ")
        assert Path(dst).name in ("CURRENT", "HISTORY") and Path(tmp).parent == repo.path
        assert events[i - 1] == ("fsync", tmp), f"{dst} replaced before its data was synced"
        assert events[i + 1] == ("fsync", str(repo.path)), "directory not synced after the rename"
    assert repo.current() == "1" and repo.history() == ["1"]
    assert sorted(p.name for p in repo.path.iterdir()) == ["1", "2", "CURRENT", "HISTORY"], "no temp files left"
