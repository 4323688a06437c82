"""A serving-only install (``pip install mipic`` without the ``train`` extra) that finds no model answers in
one line how to get one, exit 2, and starts no export; the command line itself loads no training stack."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from mipic.cli import app


def _no_child(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("no export may start without the train extra")


@pytest.fixture
def serving_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No model at the default path (a fresh directory) and Optimum not importable, as without [train]."""
    monkeypatch.chdir(tmp_path)
    for name in ("MIPIC_MODEL_DIR", "MIPIC_BOOTSTRAP_DEFAULT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setitem(sys.modules, "optimum", None)
    monkeypatch.setattr(subprocess, "run", _no_child)
    return tmp_path


@pytest.mark.parametrize("argv", [["serve"], ["embed", "in.jsonl", "out.parquet"]])
def test_no_model_and_no_train_extra_is_one_line_and_exit_2(serving_only: Path, argv: list[str]) -> None:
    (serving_only / "in.jsonl").write_text('{"text": "a"}\n')
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("mipic: error: no model at models/all-minilm-l6-v2")
    assert "pip install 'mipic[train]'" in lines[0] and "--model" in lines[0]
    assert not (serving_only / "models").exists()


def test_bootstrap_without_the_train_extra_is_one_line_and_exit_2(serving_only: Path) -> None:
    result = CliRunner().invoke(app, ["bootstrap", "--out", str(serving_only / "m" / "1")])
    assert result.exit_code == 2, result.output
    assert result.stderr.strip() == ("mipic: error: bootstrap needs the training extra (optimum is not installed): "
                                     "pip install 'mipic[train]'")
    assert not (serving_only / "m").exists()


def test_the_command_line_loads_no_training_or_server_stack() -> None:
    """``mipic --help`` and the start of ``mipic serve`` stay light: the groups import torch, FastAPI and pyarrow
    inside their commands."""
    code = ("import sys, mipic.cli; heavy = ('torch', 'transformers', 'optimum', 'fastapi', 'uvicorn', 'pyarrow'); "
            "print(sorted(m for m in heavy if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"
