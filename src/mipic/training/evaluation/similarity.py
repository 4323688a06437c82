"""Pair tasks scored by cosine: graded similarity (Spearman, Pearson) and pair classification (AP)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import average_precision_score

from mipic.training.evaluation.pooling import l2_normalize


def row_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, D), (N, D) → (N,) cosine of each row pair (inputs need not be normalised)."""
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch {a.shape} vs {b.shape}")
    return np.sum(l2_normalize(a) * l2_normalize(b), axis=1)


def pair_similarity_metrics(
    emb1: np.ndarray, emb2: np.ndarray, gold: Sequence[float] | np.ndarray
) -> dict[str, float]:
    """Spearman and Pearson correlation between gold scores and pair cosines."""
    cos = row_cosine(emb1, emb2)
    gold_arr = np.asarray(gold, dtype=np.float64)
    if len(gold_arr) != len(cos) or len(cos) < 2:
        raise ValueError(f"need >= 2 pairs and one score each, got {len(cos)} pairs, {len(gold_arr)} scores")
    return {
        "spearman": float(spearmanr(cos, gold_arr).statistic),
        "pearson": float(pearsonr(cos, gold_arr).statistic),
    }


def pair_classification_metrics(
    emb1: np.ndarray, emb2: np.ndarray, labels: Sequence[int] | np.ndarray
) -> dict[str, float]:
    """Average precision of the pair cosine as a score for label 1."""
    label_arr = np.asarray(labels, dtype=np.int64)
    if set(np.unique(label_arr)) != {0, 1}:
        raise ValueError("pair classification needs both labels 0 and 1")
    return {"ap": float(average_precision_score(label_arr, row_cosine(emb1, emb2)))}
