"""The CLI: a user error is one line on stderr and exit 2 with no traceback, for every command with a missing
path and with a bad value; --version; defaults shown; checks before work; progress bars."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mipic.cli import BUILTIN_MIN_ITEMS, app
from mipic.modeldir.repository import ModelRepository

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"
Args = Callable[[Path, Path], list[str]]  # (tmp_path, tiny model dir) → argv

MISSING = "/nonexistent/mipic-test"


def _file(tmp: Path) -> Path:
    f = tmp / "a-file"
    f.write_text("x")
    return f


def _repo(tmp: Path, model: Path) -> Path:
    repo = ModelRepository(tmp / "repo")
    repo.register(model)
    repo.promote("1")
    return repo.path


# command → (args with a missing path, words), (args with a bad value, words)
CASES: dict[str, tuple[tuple[Args, str], tuple[Args, str]]] = {
    "serve": ((lambda t, m: ["serve", "--model", MISSING], f"model directory {MISSING} does not exist"),
              (lambda t, m: ["serve", "--provider", "tpu"], "'tpu' is not one of 'auto', 'cpu', 'cuda'")),
    "bootstrap": ((lambda t, m: ["bootstrap", "--out", str(_file(t) / "1")], "is not a directory"),
                  (lambda t, m: ["bootstrap", "--out", str(_file(t))], "exists and is not a directory")),
    "calibrate": ((lambda t, m: ["calibrate", MISSING], "does not exist"),
                  (lambda t, m: ["calibrate", str(m), "--sentences", "3"], "greater than or equal to 16")),
    "heads fit": ((lambda t, m: ["heads", "fit", MISSING, "--out", str(t / "o")], "does not exist"),
                  (lambda t, m: ["heads", "fit", str(m), "--out", str(t / "o"), "--method", "svd"],
                   "'svd' is not one of")),
    "heads save-default": ((lambda t, m: ["heads", "save-default", MISSING], "does not exist"),
                           (lambda t, m: ["heads", "save-default", str(m)], "has no exit heads")),
    "export": ((lambda t, m: ["export", MISSING, str(t / "o")], "does not exist"),
               (lambda t, m: ["export", str(m), str(t / "o"), "--quantize", "int4"], "'int4' is not one of")),
    "eval": ((lambda t, m: ["eval", MISSING, "--builtin"], f"model {MISSING} is not a directory"),
             (lambda t, m: ["eval", str(m), "--builtin", "--layers", "1,x"], "not a comma-separated list")),
    "register": ((lambda t, m: ["register", MISSING, "--repo", str(t / "r")], "does not exist"),
                 (lambda t, m: ["register", str(m), "--repo", str(t / "r"), "--version", "../x"],
                  "invalid version name '../x'")),
    "promote": ((lambda t, m: ["promote", "1", "--repo", MISSING], f"no model repository at {MISSING}"),
                (lambda t, m: ["promote", "../1", "--repo", str(_repo(t, m))], "invalid version name '../1'")),
    "rollback": ((lambda t, m: ["rollback", "--repo", MISSING], f"no model repository at {MISSING}"),
                 (lambda t, m: ["rollback", "--repo", str(_repo(t, m))], "no earlier promoted version")),
    "versions": ((lambda t, m: ["versions", "--repo", MISSING], f"no model repository at {MISSING}"),
                 (lambda t, m: ["versions", "--repo", str(_file(t))], "is not a directory")),
    "train": ((lambda t, m: ["train", "--config", MISSING + ".yaml"], "does not exist"),
              (lambda t, m: ["train", "--config", str(CONFIGS / "tiny_smoke.yaml"), "--set", "loss.alpah=0.3"],
               "loss.alpah: Extra inputs are not permitted")),
    "retrain": ((lambda t, m: ["retrain", "--config", MISSING + ".yaml"], "does not exist"),
                (lambda t, m: ["retrain", "--config", str(CONFIGS / "mipic_minilm.yaml")],
                 "bad retrain config")),
    "pretrain": ((lambda t, m: ["pretrain", "--config", MISSING + ".yaml"], "does not exist"),
                 (lambda t, m: ["pretrain", "--config", str(CONFIGS / "jepa_tiny.yaml"), "--set", "bogus.key=1"],
                  "bogus: Extra inputs are not permitted")),
    "embed": ((lambda t, m: ["embed", MISSING + ".jsonl", str(t / "o.parquet"), "--model", str(m)],
               f"cannot read {MISSING}.jsonl"),
              (lambda t, m: ["embed", str(_file(t)), str(t / "o.parquet"), "--model", str(m), "--budget", "8"],
               "'8' is not DIM:LAYER")),
    "geometry": ((lambda t, m: ["geometry", MISSING], f"model {MISSING} is not a directory"),
                 (lambda t, m: ["geometry", "packaged", "--window", "0"], "--window")),
}


def test_every_command_is_covered() -> None:
    from typer.main import get_command

    root = get_command(app)
    names = {name for name in root.commands if name != "heads"}  # type: ignore[attr-defined]
    names |= {f"heads {name}" for name in root.commands["heads"].commands}  # type: ignore[attr-defined]
    assert names == set(CASES)


@pytest.mark.parametrize("kind", ["missing path", "bad value"])
@pytest.mark.parametrize("command", sorted(CASES))
def test_a_user_error_is_one_line_and_exit_2(command: str, kind: str, tmp_path: Path, tiny_model_dir: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    args, words = CASES[command][0 if kind == "missing path" else 1]
    argv = args(tmp_path, tiny_model_dir)
    monkeypatch.chdir(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 2, (argv, result.output)
    assert result.stdout == "", result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr and "error:" in lines[0]
    assert words in lines[0], lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == before, "refused before any work or output"


def test_the_real_entry_point() -> None:
    env = {**os.environ, "COLUMNS": "200"}
    version = subprocess.run([sys.executable, "-m", "mipic.cli", "--version"], capture_output=True, text=True,
                             timeout=60, check=False, env=env)
    assert version.returncode == 0 and version.stdout.strip() == "mipic 0.1.0"
    bad = subprocess.run([sys.executable, "-m", "mipic.cli", "eval", MISSING], capture_output=True, text=True,
                         timeout=60, check=False, env=env)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr


def test_serve_help_shows_the_defaults() -> None:
    result = CliRunner().invoke(app, ["serve", "--help"], env={"COLUMNS": "250", "TERMINAL_WIDTH": "250"})
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    for shown in ("127.0.0.1 or $MIPIC_HOST", "8080 or $MIPIC_PORT", "models/all-minilm-l6-v2 or $MIPIC_MODEL_DIR",
                  "auto or $MIPIC_PROVIDER", "info or $MIPIC_LOG_LEVEL", "text or $MIPIC_LOG_FORMAT"):
        assert shown in text, shown


def test_max_items_bound_is_what_works(tiny_model_dir: Path, tmp_path: Path) -> None:
    """The smallest --max-items the CLI takes with --builtin scores every built-in suite; one less is refused
    before any work. The run also shows its progress bars."""
    low = CliRunner().invoke(app, ["eval", str(tiny_model_dir), "--builtin", "--max-items",
                                   str(BUILTIN_MIN_ITEMS - 1), "--out", str(tmp_path / "low")])
    assert low.exit_code == 2 and f"minimum of {BUILTIN_MIN_ITEMS} items" in low.stderr
    assert not (tmp_path / "low").exists()
    ok = CliRunner().invoke(app, ["eval", str(tiny_model_dir), "--builtin", "--max-items", str(BUILTIN_MIN_ITEMS),
                                  "--variants", "plain", "--layers", "1", "--dims", "8", "--out", str(tmp_path / "ok")])
    assert ok.exit_code == 0, ok.output
    grid = (tmp_path / "ok" / "grid.md").read_text()
    for suite in ("bbc_topics", "rt_sentiment", "news_title_subtitle", "news_title_body"):
        assert suite in grid
    assert "embedding" in ok.stderr and "scoring budgets" in ok.stderr  # tqdm bars


def test_embed_offers_every_output_type_the_runner_has() -> None:
    """``mipic embed --embedding-type`` mirrors modeldir's output types (one list, kept in step here)."""
    from mipic.cli import EmbeddingType
    from mipic.modeldir.vector import OUTPUT_TYPES

    assert [t.value for t in EmbeddingType] == list(OUTPUT_TYPES)
