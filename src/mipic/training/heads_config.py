"""The options of an exit-head fit, spelled once (``heads.py`` fits, the CLI and the retrain config read
these defaults). No torch here, so the CLI can show the defaults without loading it."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

HeadMethod = Literal["distill", "pca", "lstsq"]
LastLayer = Literal["pca", "orthogonal", "affine", "identity"]
# The packaged corpora that are always present (WordNet depends on a Debian package, so fitting data
# would change from machine to machine if it were included by default).
DEFAULT_SOURCES: tuple[str, ...] = ("bbc", "news", "rotten")


@dataclass(frozen=True)
class HeadFitConfig:
    """Every option of a head fit; saved in the manifest's ``heads.recipe``."""

    method: HeadMethod = "distill"
    sentences: int = 6000
    passages: int = 2000
    steps: int = 1000
    batch_size: int = 256
    lr: float = 5e-3
    temperature: float = 0.05
    teacher_layer: int | None = None  # None: the last layer
    teacher_dim: int | None = None  # None: full width
    dims: tuple[int, ...] | None = None  # None: the model's served dims
    last_layer: LastLayer = "pca"
    # One space for every exit (issue 18): weight of the absolute term that pulls each (dim, layer) vector onto
    # the first dim coordinates of the last layer's vector; 0 = the relational KL alone (exits unrelated).
    align_weight: float = 30.0
    ridge: float = 1e-3  # lstsq: λ as a fraction of the mean diagonal of XᵀX
    max_length: int = 128
    seed: int = 0
    sources: tuple[str, ...] = DEFAULT_SOURCES

    def __post_init__(self) -> None:
        if self.method not in ("distill", "pca", "lstsq"):
            raise ValueError(f"method must be 'distill', 'pca' or 'lstsq', got {self.method!r}")
        if self.last_layer not in ("pca", "orthogonal", "affine", "identity"):
            raise ValueError(f"last_layer must be pca, orthogonal, affine or identity, got {self.last_layer!r}")
        if self.sentences < 16 or self.passages < 0 or self.steps < 0 or self.batch_size < 4:
            raise ValueError("need sentences >= 16, passages >= 0, steps >= 0 and batch_size >= 4")
        if not (self.temperature > 0 and self.lr > 0):
            raise ValueError("temperature and lr must be > 0")
        if self.align_weight < 0 or self.ridge < 0:
            raise ValueError("align_weight and ridge must be >= 0")

    def recipe(self) -> dict[str, str | int | float | bool]:
        out: dict[str, str | int | float | bool] = {}
        for k, v in asdict(self).items():
            if v is None:
                continue
            out[k] = ",".join(str(x) for x in v) if isinstance(v, tuple | list) else v
        return out
