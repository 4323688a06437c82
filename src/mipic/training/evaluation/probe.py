"""Linear probe: stratified, seeded k-fold cross-validated logistic-regression accuracy."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer


def probe_accuracy(
    embeddings: np.ndarray,
    labels: Sequence[str | int] | np.ndarray,
    folds: int = 5,
    seed: int = 0,
) -> dict[str, float]:
    """Mean held-out accuracy over ``folds`` stratified folds (fewer if a class is smaller).

    The probe depends only on the geometry a cosine-similarity service exposes: features are scaled
    by one global factor, √dim (so the coordinates of a wide unit vector are O(1) and the L2 penalty
    means the same at every dim), not standardised per coordinate — per-coordinate scaling would make
    the score change under a rotation of the space, which changes no similarity. C=1, lbfgs.
    """
    y = np.asarray([str(label) for label in labels])
    _, counts = np.unique(y, return_counts=True)
    if len(counts) < 2:
        raise ValueError("classification needs at least two labels")
    n_splits = min(folds, int(counts.min()))
    if n_splits < 2:
        raise ValueError("every label needs at least two examples for cross-validation")
    scale = float(np.sqrt(np.asarray(embeddings).shape[1]))
    probe = make_pipeline(FunctionTransformer(lambda x: x * scale), LogisticRegression(max_iter=2000))
    cv = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    scores = cross_val_score(probe, embeddings, y, cv=cv, scoring="accuracy")
    return {"accuracy": float(np.mean(scores))}
