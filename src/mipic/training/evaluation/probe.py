"""Linear probe: stratified, seeded k-fold cross-validated logistic-regression accuracy."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler


def probe_accuracy(
    embeddings: np.ndarray,
    labels: Sequence[str | int] | np.ndarray,
    folds: int = 5,
    seed: int = 0,
) -> dict[str, float]:
    """Mean held-out accuracy over ``folds`` stratified folds (fewer if a class is smaller).

    Features are standardised first so the probe is not penalised for the smaller norm of each
    coordinate in a wide unit vector; C=1, lbfgs.
    """
    y = np.asarray([str(label) for label in labels])
    _, counts = np.unique(y, return_counts=True)
    if len(counts) < 2:
        raise ValueError("classification needs at least two labels")
    n_splits = min(folds, int(counts.min()))
    if n_splits < 2:
        raise ValueError("every label needs at least two examples for cross-validation")
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    cv = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    scores = cross_val_score(probe, embeddings, y, cv=cv, scoring="accuracy")
    return {"accuracy": float(np.mean(scores))}
