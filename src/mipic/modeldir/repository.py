"""A versioned model repository (Triton-style), shared by the pipeline (writer) and the server (reader).

Layout::

    <root>/<name>/<version>/   staged ONNX files, tokenizer.json, golden.json, manifest.json
    <root>/<name>/CURRENT      one line: the version being served
    <root>/<name>/HISTORY      one line per promotion (oldest first), for rollback

The pointer is replaced atomically (write a temp file, fsync it, ``os.replace``, fsync the directory), so
a server watching it never reads half a name and a crash leaves the old or the new pointer, never an
empty one. A pointer that cannot be followed (missing, empty, not UTF-8, an invalid or unknown version,
larger than :data:`MAX_POINTER_BYTES`) raises :class:`PointerError`, whose message names the repository
by its directory name only, never by a server path.

Any directory that a shared volume (NFS/EFS, a PVC) or an object-store sync (``aws s3 sync``,
``gsutil rsync``) keeps up to date works: sync the version directory first, then the pointer, and the
server's checksum check refuses a version whose files have not all arrived.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from mipic.modeldir.manifest import MANIFEST_FILE, Manifest, ManifestError, load_manifest

logger = logging.getLogger(__name__)

CURRENT_FILE = "CURRENT"
HISTORY_FILE = "HISTORY"
# No leading dot or dash: "." and ".." would name the repository itself or its parent.
_VERSION_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*$")
# CURRENT holds one short version name; only this much of it is ever read.
MAX_POINTER_BYTES = 256


class RepositoryError(RuntimeError):
    """The repository operation cannot be done (unknown version, nothing to roll back to, ...)."""


class PointerError(RepositoryError):
    """CURRENT cannot be followed. The message is safe to show to clients: no server path in it."""


@dataclass(frozen=True)
class PointerState:
    """What CURRENT says right now: its first bytes, and the version directory it names or why not."""

    raw: bytes | None  # None: there is no CURRENT file
    target: Path | None
    error: str | None


def is_repository(path: Path) -> bool:
    return (path / CURRENT_FILE).is_file()


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write(path: Path, text: str) -> None:
    """Replace ``path`` by ``text`` so that readers and crashes see the old or the new content, whole:
    a uniquely named temp file is written and fsynced, renamed over ``path``, then the directory is fsynced
    so that the rename itself survives a power cut."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


class ModelRepository:
    """One model name's versions and its CURRENT pointer."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def versions(self) -> list[str]:
        if not self.path.is_dir():
            return []
        found = [p.name for p in self.path.iterdir() if _VERSION_RE.match(p.name) and (p / MANIFEST_FILE).is_file()]
        return sorted(found, key=lambda v: (len(v), v) if v.isdigit() else (10**9, v))

    def version_dir(self, version: str) -> Path:
        if not _VERSION_RE.match(version):
            raise RepositoryError(f"invalid version name {version!r}")
        return self.path / version

    def _read_pointer(self) -> bytes | None:
        """At most MAX_POINTER_BYTES + 1 bytes of CURRENT (None when there is none): a huge or endless
        file costs nothing."""
        try:
            with (self.path / CURRENT_FILE).open("rb") as f:
                return f.read(MAX_POINTER_BYTES + 1)
        except FileNotFoundError:
            return None
        except OSError as exc:  # a directory named CURRENT, no permission, ...
            raise PointerError(f"{self._name}: {CURRENT_FILE} cannot be read ({exc.strerror or 'I/O error'})") from None

    @property
    def _name(self) -> str:
        return f"repository {self.path.name!r}"

    def _parse_pointer(self, raw: bytes) -> str:
        if len(raw) > MAX_POINTER_BYTES:
            raise PointerError(f"{self._name}: {CURRENT_FILE} is larger than {MAX_POINTER_BYTES} bytes; "
                               "it must hold one version name")
        try:
            version = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise PointerError(f"{self._name}: {CURRENT_FILE} is not UTF-8 text") from None
        if not version:
            raise PointerError(f"{self._name}: {CURRENT_FILE} is empty")
        if not _VERSION_RE.match(version):
            raise PointerError(f"{self._name}: {CURRENT_FILE} names an invalid version {version!r} "
                               "(letters, digits, '.', '_' and '-' only, no leading '.' or '-')")
        return version

    def current(self) -> str | None:
        """The version CURRENT names; None when there is no CURRENT. Raises :class:`PointerError` when
        it holds anything but one valid version name."""
        raw = self._read_pointer()
        return None if raw is None else self._parse_pointer(raw)

    def current_dir(self) -> Path:
        """The directory of the CURRENT version; :class:`PointerError` unless it exists with a manifest."""
        version = self.current()
        if version is None:
            raise PointerError(f"{self._name} has no {CURRENT_FILE} pointer")
        directory = self.version_dir(version)
        if not (directory / MANIFEST_FILE).is_file():
            raise PointerError(f"{self._name}: {CURRENT_FILE} names version {version!r}, which is not in the "
                               "repository")
        return directory

    def pointer_state(self) -> PointerState:
        """CURRENT's raw bytes and where it leads, without raising: what a watcher compares between polls."""
        try:
            raw = self._read_pointer()
        except PointerError as exc:
            return PointerState(None, None, str(exc))
        try:
            return PointerState(raw, self.current_dir(), None)
        except PointerError as exc:
            return PointerState(raw, None, str(exc))

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
        _atomic_write(self.path / HISTORY_FILE, "".join(v + "\n" for v in [*self.history(), version]))
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
