"""Pooling and Matryoshka truncation: the one place where vectors are cut and re-normalised."""

from __future__ import annotations

import numpy as np


def pool(states: np.ndarray, mask: np.ndarray, pooling: str) -> np.ndarray:
    """(B, T, H) token states, (B, T) mask → (B, H) sentence vectors (not normalised)."""
    if pooling == "cls":
        return states[:, 0, :]
    m = mask[..., None].astype(states.dtype)  # (B, T, 1)
    summed = (states * m).sum(axis=1)  # (B, H)
    counts = np.clip(m.sum(axis=1), 1e-9, None)  # (B, 1)
    return summed / counts


def matryoshka(pooled: np.ndarray, dim: int) -> np.ndarray:
    """Keep the first ``dim`` values of full-width vectors and L2-normalise what is kept.

    Normalising *after* truncation matters: a prefix of a unit vector is not a unit vector.
    """
    cut = np.ascontiguousarray(pooled[..., :dim], dtype=np.float32)
    norms = np.linalg.norm(cut, axis=-1, keepdims=True)
    return cut / np.clip(norms, 1e-12, None)
