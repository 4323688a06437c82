"""Everything `mipic retrain` (and every other training command) imports is installed by the serving
dependencies plus the ``train`` extra: the trainer image installs exactly those, not the dev extra."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
from pathlib import Path

import tomllib

SRC = Path(__file__).resolve().parents[3] / "src" / "mipic"
PYPROJECT = SRC.parents[1] / "pyproject.toml"


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared() -> set[str]:
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    reqs = [*project["dependencies"], *project["optional-dependencies"]["train"]]
    return {_canonical(re.split(r"[\s\[<>=!~;]", r, maxsplit=1)[0]) for r in reqs}


def _third_party_imports() -> dict[str, set[str]]:
    """Top-level module → files importing it, over the CLI, the training package and the model directory."""
    files = [*(SRC / "cli").rglob("*.py"), SRC / "logs.py", *(SRC / "training").rglob("*.py"),
             *(SRC / "modeldir").rglob("*.py")]
    found: dict[str, set[str]] = {}
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                if top != "mipic" and top not in sys.stdlib_module_names:
                    found.setdefault(top, set()).add(str(path.relative_to(SRC)))
    return found


def test_training_commands_import_only_what_serving_and_train_extras_install() -> None:
    declared = _declared()
    provided_by = importlib.metadata.packages_distributions()
    missing = []
    for module, files in sorted(_third_party_imports().items()):
        dists = {_canonical(d) for d in provided_by.get(module, [])}
        if not dists & declared:
            missing.append(f"{module} (from {', '.join(sorted(dists)) or 'no installed distribution'}; "
                           f"imported by {', '.join(sorted(files))})")
    assert not missing, "not in [project.dependencies] or the train extra: " + "; ".join(missing)


def test_the_check_sees_the_pipelines_reload_call() -> None:
    imports = _third_party_imports()
    assert "training/pipeline.py" in imports["httpx"]
    assert "torch" in imports and "yaml" in imports
