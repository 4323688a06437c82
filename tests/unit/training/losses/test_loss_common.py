"""Shared helpers: pooling, truncation, argument checks, EncoderOutputs."""

from __future__ import annotations

import re

import pytest
import torch

from mipic.training.losses import EncoderOutputs, mean_pool, truncate_normalize
from mipic.training.losses._common import check_increasing_ints, check_weights


def test_mean_pool_ignores_padding() -> None:
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])  # (1, 3, 2)
    mask = torch.tensor([[1, 1, 0]])
    assert torch.allclose(mean_pool(hidden, mask), torch.tensor([[2.0, 3.0]]))


def test_mean_pool_all_padding_row_is_zero_not_nan() -> None:
    hidden = torch.ones(2, 3, 4)
    mask = torch.tensor([[1, 1, 1], [0, 0, 0]])
    out = mean_pool(hidden, mask)
    assert torch.equal(out[1], torch.zeros(4))
    assert torch.allclose(out[0], torch.ones(4))


def test_truncate_normalize() -> None:
    x = torch.tensor([[3.0, 4.0, 12.0]])
    out = truncate_normalize(x, 2)
    assert torch.allclose(out, torch.tensor([[0.6, 0.8]]))
    with pytest.raises(ValueError, match=re.escape("dim must be in 1..3, got 4")):
        truncate_normalize(x, 4)


def test_check_increasing_ints_messages() -> None:
    assert check_increasing_ints([2, 4], "dims") == (2, 4)
    with pytest.raises(ValueError, match=r"^dims must not be empty$"):
        check_increasing_ints([], "dims")
    with pytest.raises(ValueError, match=re.escape("dims must be positive integers, got [0, 4]")):
        check_increasing_ints([0, 4], "dims")
    with pytest.raises(ValueError, match=re.escape("dims must be positive integers, got [2.5]")):
        check_increasing_ints([2.5], "dims")
    with pytest.raises(ValueError, match=re.escape("dims must be strictly increasing, got [4, 2]")):
        check_increasing_ints([4, 2], "dims")


def test_check_weights_messages() -> None:
    assert check_weights(None, 3) == (1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match=re.escape("weights must have one entry per dim (2), got 1")):
        check_weights([1.0], 2)
    with pytest.raises(ValueError, match=re.escape("weights must be finite and >= 0, got [1.0, -1.0]")):
        check_weights([1.0, -1.0], 2)


def test_encoder_outputs_validation_and_pooling() -> None:
    hs = tuple(torch.randn(2, 3, 4) for _ in range(3))
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    out = EncoderOutputs(hidden_states=hs, attention_mask=mask)
    assert (out.num_layers, out.hidden_size, out.batch_size) == (2, 4, 2)
    pooled = out.pooled_all()
    assert len(pooled) == 3
    assert torch.allclose(pooled[2], mean_pool(hs[2], mask))
    with pytest.raises(ValueError, match="at least one layer, got 1 entries"):
        EncoderOutputs(hidden_states=hs[:1], attention_mask=mask)
    with pytest.raises(ValueError, match=re.escape("attention_mask must be (B, T) = (2, 3), got (2, 4)")):
        EncoderOutputs(hidden_states=hs, attention_mask=torch.ones(2, 4))
