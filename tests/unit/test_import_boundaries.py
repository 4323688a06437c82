"""Dependencies point one way: service → modeldir ← training, and corpus → modeldir (training may call corpus);
modeldir imports none of them, and no torch."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "mipic"


def imports_of(package: str) -> dict[str, set[str]]:
    """Every absolute module imported anywhere in ``src/mipic/<package>`` (lazy imports included)."""
    out: dict[str, set[str]] = {}
    for path in (SRC / package).rglob("*.py"):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
        out[str(path.relative_to(SRC))] = names
    return out


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("service", ("mipic.training", "torch", "transformers", "optimum")),
        ("training", ("mipic.service",)),
        ("modeldir", ("mipic.service", "mipic.training", "mipic.corpus", "mipic.cli", "torch", "fastapi",
                      "transformers")),
        ("corpus", ("mipic.service", "mipic.training", "mipic.cli", "torch", "fastapi", "transformers")),
    ],
)
def test_no_import_runs_back_up(package: str, forbidden: tuple[str, ...]) -> None:
    found = imports_of(package)
    assert found, f"no modules found under {package}"
    bad = sorted(f"{file}: {name}" for file, names in found.items() for name in names
                 if any(name == f or name.startswith(f + ".") for f in forbidden))
    assert not bad, bad


def test_mean_pooling_and_truncation_are_defined_once() -> None:
    defs: list[str] = []
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and node.name in {"mean_pool", "truncate_normalize", "matryoshka",
                                                                   "_pool_np"}:
                defs.append(f"{path.relative_to(SRC)}:{node.name}")
    assert sorted(defs) == ["modeldir/vector.py:mean_pool", "modeldir/vector.py:truncate_normalize"]


def test_the_trainable_model_does_not_import_the_release_floor() -> None:
    """``release`` (export, save the default model) builds on ``model``; the reverse import made a circle for one
    path constant, which now lives in the leaf ``training/default_assets.py``."""
    names = imports_of("training")["training/model.py"]
    assert not any(n == "mipic.training.release" or n.startswith("mipic.training.release.") for n in names)
    leaf = imports_of("training")["training/default_assets.py"]
    assert not any(n.startswith("mipic") for n in leaf)


def test_default_dims_have_one_home() -> None:
    """The default Matryoshka prefixes are a contract fact: spelled once, in the manifest's module."""
    homes: list[str] = []
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and node.name.lstrip("_") == "default_dims":
                homes.append(f"{path.relative_to(SRC)}:def")
            elif isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "DEFAULT_DIMS"
                                                      for t in node.targets):
                homes.append(f"{path.relative_to(SRC)}:DEFAULT_DIMS")
    assert sorted(homes) == ["modeldir/manifest.py:DEFAULT_DIMS", "modeldir/manifest.py:def"]
