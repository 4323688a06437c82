"""A versioned model repository (Triton-style), shared by the pipeline (writer) and the server (reader).

Layout::

    <root>/<name>/<version>/   staged ONNX files, tokenizer.json, golden.json, manifest.json
    <root>/<name>/CURRENT      one line: the version being served
    <root>/<name>/HISTORY      one line per promotion (oldest first), for rollback

The pointer is replaced atomically (write a temp file, ``os.replace``), so a server watching it never
reads half a name. Any directory that a shared volume (NFS/EFS, a PVC) or an object-store sync
(``aws s3 sync``, ``gsutil rsync``) keeps up to date works: sync the version directory first, then the
pointer, and the server's checksum check refuses a version whose files have not all arrived.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path

from mipic.modeldir.manifest import MANIFEST_FILE, Manifest, ManifestError, load_manifest

logger = logging.getLogger(__name__)

CURRENT_FILE = "CURRENT"
HISTORY_FILE = "HISTORY"
_VERSION_RE = re.compile(r"^[A-Za-z0-9._-]+$")


class RepositoryError(RuntimeError):
    """The repository operation cannot be done (unknown version, nothing to roll back to, ...)."""


def is_repository(path: Path) -> bool:
    return (path / CURRENT_FILE).is_file()


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class ModelRepository:
    """One model name's versions and its CURRENT pointer."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def versions(self) -> list[str]:
        if not self.path.is_dir():
            return []
        found = [p.name for p in self.path.iterdir() if (p / MANIFEST_FILE).is_file()]
        return sorted(found, key=lambda v: (len(v), v) if v.isdigit() else (10**9, v))

    def version_dir(self, version: str) -> Path:
        if not _VERSION_RE.match(version):
            raise RepositoryError(f"invalid version name {version!r}")
        return self.path / version

    def current(self) -> str | None:
        pointer = self.path / CURRENT_FILE
        if not pointer.is_file():
            return None
        value = pointer.read_text().strip()
        return value or None

    def current_dir(self) -> Path:
        version = self.current()
        if version is None:
            raise RepositoryError(f"{self.path} has no {CURRENT_FILE} pointer")
        return self.version_dir(version)

    def history(self) -> list[str]:
        path = self.path / HISTORY_FILE
        return [ln.strip() for ln in path.read_text().splitlines() if ln.strip()] if path.is_file() else []

    def next_version(self) -> str:
        numeric = [int(v) for v in self.versions() if v.isdigit()]
        return str(max(numeric, default=0) + 1)

    def verify(self, version: str) -> Manifest:
        """Manifest schema + every checksum; raises :class:`ManifestError` with the reason."""
        directory = self.version_dir(version)
        manifest = load_manifest(directory, verify=True)
        if manifest.version != version:
            raise ManifestError(
                f"{directory}: manifest says version {manifest.version!r}, directory {version!r}"
            )
        return manifest

    def register(self, source: Path, version: str | None = None) -> str:
        """Copy an exported model directory in as a new version (not promoted)."""
        manifest = load_manifest(source, verify=True)
        version = version or manifest.version
        target = self.version_dir(version)
        if target.exists():
            raise RepositoryError(f"version {version} already exists in {self.path}")
        if manifest.version != version:
            raise RepositoryError(f"{source} is version {manifest.version}, not {version}")
        self.path.mkdir(parents=True, exist_ok=True)
        tmp = self.path / f".{version}.incoming"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(source, tmp)
        os.replace(tmp, target)
        logger.info("registered %s version %s", manifest.name, version)
        return version

    def promote(self, version: str) -> None:
        """Point CURRENT at ``version`` after verifying it; the served version is untouched on failure."""
        self.verify(version)
        _atomic_write(self.path / CURRENT_FILE, version + "\n")
        with (self.path / HISTORY_FILE).open("a") as f:
            f.write(version + "\n")
        logger.info("promoted %s to version %s", self.path.name, version)

    def rollback(self) -> str:
        """Point CURRENT at the version promoted before the current one."""
        current = self.current()
        previous = [v for v in self.history() if v != current]
        if not previous:
            raise RepositoryError("no earlier promoted version to roll back to")
        target = previous[-1]
        self.verify(target)
        _atomic_write(self.path / CURRENT_FILE, target + "\n")
        # rewrite history so that a second rollback goes one further back
        hist = self.history()
        while hist and hist[-1] == current:
            hist.pop()
        _atomic_write(self.path / HISTORY_FILE, "".join(v + "\n" for v in hist))
        logger.info("rolled %s back from %s to %s", self.path.name, current, target)
        return target


def resolve_model_dir(path: Path) -> tuple[Path, ModelRepository | None]:
    """A version directory serves as is; a repository directory serves its CURRENT version."""
    if is_repository(path):
        repo = ModelRepository(path)
        return repo.current_dir(), repo
    return path, None
