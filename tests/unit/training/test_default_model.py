"""The default model's one home: a serving process gets it from a child ``mipic bootstrap``, or is told in one
line how to get one when the ``train`` extra is missing; ``export --heads`` choices mean one thing everywhere."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from mipic.modeldir.repository import ModelRepository
from mipic.training import default_model


def _no_child(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("no child process may start")


def test_an_install_without_the_train_extra_is_told_how_to_get_a_model(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "optimum", None)  # as if `pip install mipic` without [train]
    monkeypatch.setattr(subprocess, "run", _no_child)
    assert "optimum" in default_model.missing_export_modules()
    with pytest.raises(default_model.NoDefaultModel) as caught:
        default_model.ensure_default_model(tmp_path / "repo")
    message = str(caught.value)
    assert "\n" not in message and "pip install 'mipic[train]'" in message and "--model" in message
    assert "optimum is not installed" in message
    assert not (tmp_path / "repo").exists()


def test_a_repository_is_left_as_it_is(tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = ModelRepository(tmp_path / "repo")
    repo.register(tiny_model_dir)
    repo.promote("1")
    monkeypatch.setattr(subprocess, "run", _no_child)
    default_model.ensure_default_model(repo.path)


def test_the_child_is_mipic_bootstrap_offline_and_its_failure_is_raised(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[list[str], dict[str, str]]] = []

    def fake_run(cmd: list[str], env: dict[str, str], check: bool) -> subprocess.CompletedProcess[bytes]:
        calls.append((cmd, env))
        return subprocess.CompletedProcess(cmd, 1)

    monkeypatch.setattr(default_model, "missing_export_modules", lambda: [])
    monkeypatch.setattr(subprocess, "run", fake_run)
    with pytest.raises(default_model.BootstrapFailed, match="exporting the default model failed"):
        default_model.ensure_default_model(tmp_path / "repo")
    (cmd, env), = calls
    assert cmd == [sys.executable, "-m", "mipic.cli", "bootstrap", "--out", str(tmp_path / "repo" / "1")]
    assert env["HF_HUB_OFFLINE"] == "1"


def test_heads_choices(tmp_path: Path) -> None:
    from mipic.training.heads_config import HeadFitConfig
    from mipic.training.release import heads_choice

    assert heads_choice(tmp_path, "none") is None
    assert heads_choice(tmp_path, "checkpoint") == "checkpoint"
    assert heads_choice(tmp_path, "auto") == HeadFitConfig()  # no heads.npz: a distill fit
    assert heads_choice(tmp_path, "pca") == HeadFitConfig(method="pca")
    (tmp_path / "heads.npz").write_bytes(b"")
    assert heads_choice(tmp_path, "auto") == "checkpoint"
    assert heads_choice(tmp_path, "distill") == HeadFitConfig()
