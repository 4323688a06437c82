"""Pooling variants for the geometry study (CLS, max, layer averages); mean pooling and the Matryoshka
cut are the served ones from ``mipic.modeldir.vector``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

from mipic.modeldir.vector import l2_normalize, mean_pool, truncate_normalize

__all__ = ["POOLING_VARIANTS", "PoolingVariant", "l2_normalize", "max_pool", "mean_pool", "pool_hidden_states",
           "truncate_normalize"]

PoolingVariant = Literal["cls", "mean", "max", "last_layers_avg", "first_last_avg"]
POOLING_VARIANTS: tuple[PoolingVariant, ...] = ("cls", "mean", "max", "last_layers_avg", "first_last_avg")


def max_pool(states: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(B, T, H) → (B, H) element-wise max over valid tokens."""
    masked = np.where(mask[..., None].astype(bool), states, -np.inf)
    return masked.max(axis=1)


def pool_hidden_states(
    hidden_states: Sequence[np.ndarray],
    mask: np.ndarray,
    layer: int,
    variant: PoolingVariant = "mean",
    window: int = 2,
) -> np.ndarray:
    """Pool raw token states of one layer (or a layer average) into (B, H), unnormalised.

    ``hidden_states`` is the model's tuple: index 0 the embedding output, ``l`` the output of layer
    ``l`` (each (B, T, H)). Variants: ``cls`` (first token), ``mean`` and ``max`` (over valid tokens)
    of layer ``layer``; ``last_layers_avg`` the mean pool of the element-wise average of the last
    ``window`` layers up to ``layer`` (layers ``layer-window+1 .. layer``, at least layer 1);
    ``first_last_avg`` the mean pool of the average of layer 1 and layer ``layer`` (Su et al. 2021).
    """
    if not 1 <= layer < len(hidden_states):
        raise ValueError(f"layer must be in 1..{len(hidden_states) - 1}, got {layer}")
    if variant == "cls":
        return np.asarray(hidden_states[layer])[:, 0]
    if variant == "mean":
        return mean_pool(np.asarray(hidden_states[layer]), mask)
    if variant == "max":
        return max_pool(np.asarray(hidden_states[layer]), mask)
    if variant == "last_layers_avg":
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        chosen = [np.asarray(hidden_states[i]) for i in range(max(1, layer - window + 1), layer + 1)]
        return mean_pool(np.mean(chosen, axis=0), mask)
    if variant == "first_last_avg":
        avg = (np.asarray(hidden_states[1]) + np.asarray(hidden_states[layer])) / 2
        return mean_pool(avg, mask)
    raise ValueError(f"unknown pooling variant {variant!r}; expected one of {POOLING_VARIANTS}")
