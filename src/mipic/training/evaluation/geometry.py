"""Embedding-space geometry: alignment and uniformity (Wang & Isola 2020), effective rank, isotropy."""

from __future__ import annotations

import numpy as np
from scipy.special import logsumexp

from mipic.training.evaluation.pooling import l2_normalize


def alignment(x: np.ndarray, y: np.ndarray, alpha: float = 2.0) -> float:
    """E ‖f(x) − f(y)‖^α over positive pairs (rows of ``x`` and ``y``); lower is better."""
    if x.shape != y.shape or len(x) == 0:
        raise ValueError(f"need equal, non-empty shapes, got {x.shape} and {y.shape}")
    return float(np.mean(np.linalg.norm(x - y, axis=1) ** alpha))


def uniformity(x: np.ndarray, t: float = 2.0) -> float:
    """log E exp(−t‖x_i − x_j‖²) over distinct pairs i < j; lower is more uniform."""
    n = len(x)
    if n < 2:
        raise ValueError("uniformity needs at least two points")
    sq = np.sum(x * x, axis=1)
    d2 = np.clip(sq[:, None] + sq[None, :] - 2 * x @ x.T, 0.0, None)  # (N, N)
    iu = np.triu_indices(n, k=1)
    return float(logsumexp(-t * d2[iu]) - np.log(len(iu[0])))


def effective_rank(x: np.ndarray) -> float:
    """exp of the Shannon entropy of the normalised singular values (Roy & Vetterli 2007)."""
    s = np.linalg.svd(np.asarray(x, dtype=np.float64), compute_uv=False)
    s = s[s > 0]
    if len(s) == 0:
        return 0.0
    p = s / s.sum()
    return float(np.exp(-np.sum(p * np.log(p))))


def isotropy(x: np.ndarray) -> float:
    """Partition-function isotropy min_c Z(c) / max_c Z(c), Z(c) = Σ_i exp(cᵀx_i) (Mu & Viswanath 2018).

    ``c`` ranges over the eigenvectors of XᵀX and their negatives (an eigenvector's sign is
    arbitrary). 1 is perfectly isotropic; near 0 means a dominant direction.
    """
    x64 = np.asarray(x, dtype=np.float64)
    _, vecs = np.linalg.eigh(x64.T @ x64)  # columns are eigenvectors, (D, D)
    directions = np.concatenate([vecs, -vecs], axis=1)  # (D, 2D)
    log_z = logsumexp(x64 @ directions, axis=0)  # (2D,)
    return float(np.exp(log_z.min() - log_z.max()))


def geometry_metrics(
    x: np.ndarray, pos_a: np.ndarray | None = None, pos_b: np.ndarray | None = None
) -> dict[str, float]:
    """Uniformity, effective rank and isotropy of ``x`` (rows re-normalised), alignment of the pairs."""
    unit = l2_normalize(x)
    out = {
        "uniformity": uniformity(unit),
        "effective_rank": effective_rank(unit),
        "isotropy": isotropy(unit),
    }
    if pos_a is not None and pos_b is not None and len(pos_a):
        out["alignment"] = alignment(l2_normalize(pos_a), l2_normalize(pos_b))
    return out
