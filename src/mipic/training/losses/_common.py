"""Pieces shared by the MIPIC losses: pooling, truncation, argument checks and the I/O dataclasses.

Conventions used by every loss in this package:

* Embeddings are plain tensors. ``(B, D)`` for pooled embeddings, ``(B, T, H)`` for token states,
  ``(B, T)`` for the attention mask (1 = real token, 0 = padding).
* A budget is a ``(dim, layer)`` pair. Layer indices run from 1 to L and index ``hidden_states`` of a
  Hugging Face model called with ``output_hidden_states=True`` (index 0 is the embedding block), so
  ``hidden_states[layer]`` is the output of encoder layer ``layer``.
* The embedding served at a budget is ``truncate_normalize(mean_pool(hidden_states[layer], mask), dim)``;
  the losses train exactly that quantity.
"""

from __future__ import annotations

import itertools
import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from mipic.modeldir.vector import mean_pool, truncate_normalize

__all__ = ["EncoderOutputs", "LossOutput", "cosine_logits", "mean_pool", "truncate_normalize"]


def cosine_logits(a: Tensor, b: Tensor, temperature: float) -> Tensor:
    """In-batch cosine similarities divided by the temperature: (B, D), (B', D) → (B, B').

    Computed in float32 at least, since the logits feed a softmax and 1/τ is large (τ = 0.05 → ×20).
    """
    dtype = torch.promote_types(a.dtype, torch.float32)
    a_n = F.normalize(a.to(dtype), p=2.0, dim=-1)
    b_n = F.normalize(b.to(dtype), p=2.0, dim=-1)
    return a_n @ b_n.T / temperature  # (B, B')


# --------------------------------------------------------------------------- argument checks


def _as_int(value: object) -> int | None:
    """``int(value)`` for int-like values (Python or NumPy ints, not bools), else ``None``."""
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        return None


def check_positive(name: str, value: float) -> float:
    """Reject ``value <= 0`` (and NaN)."""
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    return float(value)


def check_non_negative(name: str, value: float) -> float:
    """Reject ``value < 0`` (and NaN, inf)."""
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be finite and >= 0, got {value}")
    return float(value)


def check_increasing_ints(values: Sequence[int], name: str) -> tuple[int, ...]:
    """Non-empty, positive, strictly increasing integers (dims or layer indices)."""
    raw = tuple(values)
    if not raw:
        raise ValueError(f"{name} must not be empty")
    ints = [_as_int(v) for v in raw]
    if any(v is None or v <= 0 for v in ints):
        raise ValueError(f"{name} must be positive integers, got {list(raw)}")
    out = tuple(v for v in ints if v is not None)
    if any(b <= a for a, b in itertools.pairwise(out)):
        raise ValueError(f"{name} must be strictly increasing, got {list(out)}")
    return out


def check_weights(
    weights: Sequence[float] | None, n: int, name: str = "weights", per: str = "dim"
) -> tuple[float, ...]:
    """One finite, non-negative weight per entry; ``None`` means all ones."""
    if weights is None:
        return (1.0,) * n
    out = tuple(float(w) for w in weights)
    if len(out) != n:
        raise ValueError(f"{name} must have one entry per {per} ({n}), got {len(out)}")
    if any(not (math.isfinite(w) and w >= 0) for w in out):
        raise ValueError(f"{name} must be finite and >= 0, got {list(out)}")
    return out


def usable_dims(dims: Sequence[int], size: int) -> list[int]:
    """The dims of ``dims`` below ``size`` (those with a residual); an error when there is none."""
    usable = [d for d in dims if d < size]
    if not usable:
        raise ValueError(f"no dim in {list(dims)} is smaller than the embedding size {size}")
    return usable


# --------------------------------------------------------------------------- I/O dataclasses


@dataclass(frozen=True)
class EncoderOutputs:
    """What the losses need from one forward pass (one *view*) of the encoder.

    Attributes:
        hidden_states: L + 1 tensors of shape (B, T, H), as returned by a Hugging Face encoder with
            ``output_hidden_states=True``; index 0 is the embedding block, index ℓ the output of layer ℓ.
        attention_mask: (B, T), 1 for real tokens, 0 for padding.
    """

    hidden_states: tuple[Tensor, ...]
    attention_mask: Tensor
    #: Optional exit-head read-out ``(layer, pooled (B, H)) → (B, H)``: when set, :meth:`pooled` and
    #: :meth:`pooled_all` return what the server serves at that layer (pooled states through the head), so
    #: every loss built on them trains the served vectors. Layer 0 (the embedding block) is never mapped.
    readout: Callable[[int, Tensor], Tensor] | None = None

    def __post_init__(self) -> None:
        if len(self.hidden_states) < 2:
            raise ValueError(
                "hidden_states must hold the embedding output and at least one layer, "
                f"got {len(self.hidden_states)} entries"
            )
        shape = self.hidden_states[0].shape
        if len(shape) != 3:
            raise ValueError(f"hidden_states entries must be (B, T, H), got shape {tuple(shape)}")
        if any(h.shape != shape for h in self.hidden_states):
            raise ValueError("hidden_states entries must all have the same shape")
        if self.attention_mask.shape != shape[:2]:
            raise ValueError(
                f"attention_mask must be (B, T) = {tuple(shape[:2])}, got {tuple(self.attention_mask.shape)}"
            )

    @classmethod
    def from_hf(cls, outputs: object, attention_mask: Tensor) -> EncoderOutputs:
        """Wrap a Hugging Face model output (called with ``output_hidden_states=True``)."""
        hidden_states = getattr(outputs, "hidden_states", None)
        if hidden_states is None:
            raise ValueError(
                "the model output has no hidden_states; call the model with output_hidden_states=True"
            )
        return cls(hidden_states=tuple(hidden_states), attention_mask=attention_mask)

    @property
    def num_layers(self) -> int:
        """L, the number of encoder layers."""
        return len(self.hidden_states) - 1

    @property
    def hidden_size(self) -> int:
        return int(self.hidden_states[0].shape[-1])

    @property
    def batch_size(self) -> int:
        return int(self.hidden_states[0].shape[0])

    def pooled(self, layer: int) -> Tensor:
        """Mean-pooled (untruncated, unnormalised) embedding at ``layer`` through its read-out: (B, H)."""
        pooled = mean_pool(self.hidden_states[layer], self.attention_mask)
        return self.readout(layer, pooled) if self.readout is not None and layer > 0 else pooled

    def pooled_all(self) -> list[Tensor]:
        """:meth:`pooled` of every entry of ``hidden_states`` (L + 1 tensors of shape (B, H))."""
        return [self.pooled(layer) for layer in range(len(self.hidden_states))]


@dataclass
class LossOutput:
    """A training loss and its terms for logging.

    Attributes:
        loss: the scalar to back-propagate.
        terms: each term's value as a Python float (raw, before weighting and normalisation), plus
            ``"total"``.
    """

    loss: Tensor
    terms: dict[str, float] = field(default_factory=dict)
