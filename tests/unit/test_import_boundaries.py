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


def module_graph() -> dict[str, set[str]]:
    """Every ``mipic`` module → the ``mipic`` modules it imports (lazy imports included): ``from a.b import c``
    points at ``a.b.c`` where that is a module, else at ``a.b``."""
    files = {p: ".".join(("mipic", *p.relative_to(SRC).with_suffix("").parts)).removesuffix(".__init__")
             for p in SRC.rglob("*.py")}
    modules = set(files.values())
    graph: dict[str, set[str]] = {}
    for path, name in files.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets.update(f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                               for a in node.names)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group: list[str] = []
            while not group or group[-1] != v:
                group.append(stack.pop())
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_circles_are_found() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert circles(graph) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_no_circle_among_mipic_modules() -> None:
    """No two modules import each other, directly or round a loop (lazy imports count: a lazy import hides a
    circle from Python, not from a reader)."""
    graph = module_graph()
    assert graph.get("mipic.corpus.job")
    assert circles(graph) == []
