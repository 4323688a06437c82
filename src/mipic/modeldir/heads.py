"""Exit heads: one affine map per exit layer, applied to the pooled states before truncation.

File format: ``heads.npz`` (NumPy, loaded with ``allow_pickle=False``) holding

* ``weight`` float32 (L, H, H): ``weight[l - 1]`` is W_l, rows are output coordinates in Matryoshka
  order (row 0 is the most important one);
* ``bias``   float32 (L, H): b_l;

for every encoder layer l = 1..L. The served vector at (layer l, dim d) is
``normalise((W_l x + b_l)[:d])`` where x is the pooled state of layer l (``vector.embed``).

Why one ``.npz`` and not ONNX graphs or safetensors: the heads are a few H×H matrices applied once per
text to a (B, H) array the runner already holds in NumPy, so a NumPy matmul is the cheapest place to
run them (a graph per head would add a session call per exit layer), only the first ``d`` rows of W
are computed for a budget of ``d``, and the serving image needs nothing beyond NumPy to read them.
The file is listed in the manifest with its SHA-256 like every other file; its shapes and values are
checked on load (:func:`load_heads`), and ``golden.json`` holds reference vectors computed through
the heads, so an altered file is refused even when checksums are not verified.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mipic.modeldir.manifest import ManifestError

HEADS_FILE = "heads.npz"


@dataclass(frozen=True)
class ExitHeads:
    """W (L, H, H) and b (L, H), float32; index ``l - 1`` is exit layer ``l``."""

    weight: np.ndarray
    bias: np.ndarray

    @property
    def num_layers(self) -> int:
        return int(self.weight.shape[0])

    @property
    def hidden_size(self) -> int:
        return int(self.weight.shape[2])

    def layer(self, layer: int) -> tuple[np.ndarray, np.ndarray]:
        """(W_l, b_l) of exit layer ``layer`` (1-based)."""
        return self.weight[layer - 1], self.bias[layer - 1]

    @classmethod
    def identity(cls, num_layers: int, hidden_size: int) -> ExitHeads:
        """Heads that change nothing (plain truncation)."""
        weight = np.broadcast_to(np.eye(hidden_size, dtype=np.float32), (num_layers, hidden_size, hidden_size))
        return cls(np.ascontiguousarray(weight), np.zeros((num_layers, hidden_size), np.float32))


def check_heads(heads: ExitHeads, num_layers: int, hidden_size: int, name: str = HEADS_FILE) -> ExitHeads:
    """Shape and value checks; raises :class:`ManifestError` with a one-line reason naming the file."""
    want_w, want_b = (num_layers, hidden_size, hidden_size), (num_layers, hidden_size)
    if heads.weight.shape != want_w or heads.bias.shape != want_b:
        raise ManifestError(
            f"{name}: weight {tuple(heads.weight.shape)} / bias {tuple(heads.bias.shape)} do not match the model "
            f"(expected {want_w} / {want_b})"
        )
    if not (np.isfinite(heads.weight).all() and np.isfinite(heads.bias).all()):
        raise ManifestError(f"{name}: contains NaN or infinite values")
    return heads


def load_heads(path: Path, num_layers: int, hidden_size: int) -> ExitHeads:
    """Read and check ``heads.npz``; every problem is a :class:`ManifestError` naming the file."""
    name = path.name
    if not path.is_file():
        raise ManifestError(f"{name}: the manifest names exit heads but the file is missing")
    try:
        with np.load(path, allow_pickle=False) as data:
            if "weight" not in data or "bias" not in data:
                raise ManifestError(f"{name}: needs arrays 'weight' and 'bias', has {sorted(data.files)}")
            weight = np.ascontiguousarray(data["weight"], dtype=np.float32)
            bias = np.ascontiguousarray(data["bias"], dtype=np.float32)
    except ManifestError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise ManifestError(f"{name}: not a readable .npz file ({type(exc).__name__})") from exc
    return check_heads(ExitHeads(weight, bias), num_layers, hidden_size, name)


def save_heads(path: Path, heads: ExitHeads) -> None:
    """Write ``heads.npz`` (uncompressed: the values are dense floats, compression saves ~7%)."""
    check_heads(heads, heads.num_layers, heads.hidden_size, path.name)
    with path.open("wb") as f:
        np.savez(f, weight=heads.weight.astype(np.float32), bias=heads.bias.astype(np.float32))
