"""The served vector, defined once: pool → exit head → truncate → L2-normalise → quantise.

Every embedding this project produces or trains goes through these functions: the server's runner on
NumPy arrays, the training losses and the head fitter on torch tensors (differentiably), and the
evaluation grid. They are written against the array API (``array-api-compat``), so one implementation
serves both libraries and training optimises exactly the quantity the server returns. Importing this
module imports neither torch nor onnxruntime.

Order, and why:

1. **pool** the exit layer's token states over real tokens (mean, or CLS);
2. **head**: the exit layer's affine map ``z = W_l x + b_l`` when the model carries exit heads
   (``heads.py``); only the first ``dim`` rows of ``W_l`` are needed, so a small budget also pays less
   for its head;
3. **truncate** to the first ``dim`` values (Matryoshka prefix);
4. **L2-normalise** what is kept: a prefix of a unit vector is not a unit vector, so normalising
   before the cut would be wrong;
5. **quantise** (optional, serving only) the unit vector to a compact output type
   (:func:`quantize`): int8/uint8 with a fixed range calibrated at export for that (layer, dim)
   (:func:`calibration_range`), never from the batch, so a vector does not depend on its batch-mates;
   binary/ubinary by the sign of each value.

Steps 1-4 are written against the array API, with a direct NumPy branch of the same formula in each (the
namespace lookup and array-API wrappers cost ~0.1 ms a call: at one short text at layer 1 that was a tenth of the
request; the branches are tested equal to torch's in ``tests/unit/modeldir/test_vector.py``). Step 5 only runs
on the NumPy vectors a server returns (bit packing has no array-API equivalent), so it is NumPy.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

import numpy as np
from array_api_compat import array_namespace

EPS = 1e-12

Array = Any  # numpy.ndarray or torch.Tensor (same namespace for every argument of a call)


def mean_pool(states: Array, mask: Array) -> Array:
    """(B, T, H) token states, (B, T) 0/1 mask → (B, H): the mean over real tokens.

    A row without real tokens pools to zeros (its count is clamped), never NaN.
    """
    if len(states.shape) != 3 or tuple(mask.shape) != tuple(states.shape[:2]):
        raise ValueError(
            f"need states (B, T, H) and mask (B, T); got {tuple(states.shape)} and {tuple(mask.shape)}"
        )
    if isinstance(states, np.ndarray):  # the server's hot path: one batched matmul, no (B, T, H) temporary
        w = mask.astype(states.dtype)[:, None, :]  # (B, 1, T)
        return (w @ states)[:, 0, :] / np.maximum(w.sum(axis=2), 1e-9)  # (B, H)
    xp = array_namespace(states)
    m = xp.astype(mask, states.dtype)[..., None]  # (B, T, 1)
    return xp.sum(states * m, axis=1) / xp.clip(xp.sum(m, axis=1), min=1e-9)  # (B, H)


def pool(states: Array, mask: Array, pooling: str) -> Array:
    """(B, T, H), (B, T) → (B, H) sentence vectors (not normalised): ``mean`` or ``cls``."""
    if pooling == "cls":
        return states[:, 0, :]
    if pooling == "mean":
        return mean_pool(states, mask)
    raise ValueError(f"unknown pooling {pooling!r}; expected 'mean' or 'cls'")


def apply_head(pooled: Array, weight: Array, bias: Array, dim: int | None = None) -> Array:
    """(B, H) pooled → (B, dim) = pooled @ W[:dim]ᵀ + b[:dim]; ``weight`` is (H_out, H), ``bias`` (H_out,).

    Only the first ``dim`` output rows are computed: the prefix is all a budget of ``dim`` keeps.
    """
    d = weight.shape[0] if dim is None else dim
    if isinstance(pooled, np.ndarray):  # NumPy directly: the namespace lookup costs as much as a tiny head
        return pooled @ weight[:d].T + bias[:d]
    xp = array_namespace(pooled)
    return xp.matmul(pooled, xp.permute_dims(weight[:d], (1, 0))) + bias[:d]


def l2_normalize(x: Array) -> Array:
    """Rows divided by their L2 norm (norms clamped at 1e-12, so a zero row stays zero)."""
    if isinstance(x, np.ndarray):
        return x / np.maximum(np.sqrt(np.einsum("...i,...i->...", x, x))[..., None], EPS)
    xp = array_namespace(x)
    return x / xp.clip(xp.linalg.vector_norm(x, axis=-1, keepdims=True), min=EPS)


def truncate_normalize(x: Array, dim: int) -> Array:
    """(..., H) full-width vectors → (..., dim): keep the first ``dim`` values, then L2-normalise."""
    if not 0 < dim <= x.shape[-1]:
        raise ValueError(f"dim must be in 1..{x.shape[-1]}, got {dim}")
    return l2_normalize(x[..., :dim])


def embed(pooled: Array, dim: int, head: tuple[Array, Array] | None = None) -> Array:
    """Pooled (B, H) vectors of one exit layer → the served (B, dim) unit vectors.

    ``head`` is that layer's ``(W, b)`` or ``None`` for plain truncation.
    """
    if head is not None:
        return l2_normalize(apply_head(pooled, head[0], head[1], dim))
    return truncate_normalize(pooled, dim)


# --------------------------------------------------------------------------- 5. quantise

OutputType = Literal["float", "int8", "uint8", "binary", "ubinary"]
OUTPUT_TYPES: tuple[str, ...] = get_args(OutputType)
CALIBRATED_TYPES = frozenset({"int8", "uint8"})  # need the (layer, dim) ranges from the manifest
PACKED_TYPES = frozenset({"binary", "ubinary"})  # one bit per value: dim must be a multiple of 8


def calibration_range(vectors: np.ndarray) -> tuple[float, float]:
    """(N, dim) served unit vectors of one (layer, dim) → its range (low, high) = (−m, m), m = the largest
    |value| over all N calibration vectors and coordinates.

    One range for the whole vector, not one per coordinate: a per-coordinate range rescales each coordinate
    differently, which distorts the cosine and distance a client computes on the codes (measured on the
    default model: up to −0.06 nDCG@10 against ≤ 0.002 with one range; ``bench/output_types.py``). Symmetric,
    so that 0 maps to the int8 code 0 and int8 codes are the float vector times one scale.
    """
    if vectors.ndim != 2 or vectors.shape[0] < 2:
        raise ValueError(f"need (N >= 2, dim) vectors to calibrate; got {vectors.shape}")
    m = float(np.max(np.abs(np.asarray(vectors, dtype=np.float64))))
    return -m, m


def quantize(
    vectors: np.ndarray,
    output: str,
    low: float | None = None,
    high: float | None = None,
) -> np.ndarray:
    """(N, dim) served unit vectors → the output type (``float`` returns them unchanged, float32).

    * ``uint8``: ``q = clip(round((x - low) / (high - low) * 255), 0, 255)`` for every value, with the
      calibrated range (low, high) of this (layer, dim); a value outside it saturates.
    * ``int8``: the same level minus 128, in -128..127 (with the symmetric range, 0 → 0).
    * ``ubinary``: bit = x > 0, packed eight coordinates per byte, the first coordinate in the most
      significant bit (``numpy.packbits``), as uint8 (dim / 8 values).
    * ``binary``: the ubinary byte minus 128, as int8 (the convention of Cohere and
      sentence-transformers' ``quantize_embeddings``).
    """
    x = np.asarray(vectors, dtype=np.float32)
    if output == "float":
        return x
    if output in PACKED_TYPES:
        if x.shape[-1] % 8:
            raise ValueError(f"{output} packs 8 values per byte: dim {x.shape[-1]} is not a multiple of 8")
        packed = np.packbits(x > 0, axis=-1)  # (N, dim / 8) uint8
        return packed if output == "ubinary" else (packed.astype(np.int16) - 128).astype(np.int8)
    if output in CALIBRATED_TYPES:
        if low is None or high is None:
            raise ValueError(f"{output} needs the calibrated (low, high) range of this (layer, dim)")
        width = max(high - low, EPS)
        levels = np.clip(np.rint((x.astype(np.float64) - low) / width * 255.0), 0, 255)  # (N, dim) in 0..255
        return levels.astype(np.uint8) if output == "uint8" else (levels - 128).astype(np.int8)
    raise ValueError(f"unknown output type {output!r}; expected one of {list(OUTPUT_TYPES)}")
