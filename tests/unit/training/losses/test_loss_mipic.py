"""MIPICLoss: the combined objective, term normalisation, a few real optimisation steps, and the terms it is
given (built from a config section by MIPICObjective, or by hand)."""

from __future__ import annotations

import re

import pytest
import torch
from transformers import BertConfig, BertModel

from mipic.training.config import MIPICSection
from mipic.training.losses import TERM_NAMES, EncoderOutputs, LossOutput, MatryoshkaInfoNCELoss, MIPICLoss, PICLoss
from mipic.training.objectives.mipic import MIPICObjective

HIDDEN, LAYERS = 32, 2


def _model() -> BertModel:
    torch.manual_seed(0)
    config = BertConfig(
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=2,
        intermediate_size=64,
        vocab_size=100,
        max_position_embeddings=32,
    )
    return BertModel(config)


def _batch(batch: int = 8, tokens: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 100, (batch, tokens), generator=g)
    ids[:, 0] = 2  # a [CLS]-like first token
    lengths = torch.tensor([12, 12, 10, 9, 12, 7, 11, 12])[:batch]
    mask = (torch.arange(tokens).unsqueeze(0) < lengths.unsqueeze(1)).long()
    return ids * mask, mask


def _views(model: BertModel, ids: torch.Tensor, mask: torch.Tensor) -> tuple[EncoderOutputs, EncoderOutputs]:
    # Two passes in train mode = two dropout masks (SimCSE views).
    a = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    b = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    return EncoderOutputs.from_hf(a, mask), EncoderOutputs.from_hf(b, mask)


def _loss(**kwargs: object) -> MIPICLoss:
    torch.manual_seed(0)
    section = MIPICSection(dims=[8, 16, 32], chain=[(8, 1), (16, 1), (32, 2)], sia_layers=[1, 2], sia_k_min=3)
    return MIPICObjective.from_config(section.model_copy(update=kwargs), HIDDEN, LAYERS)


def test_total_is_the_documented_combination() -> None:
    model = _model()
    model.train()
    ids, mask = _batch()
    loss = _loss(alpha=0.3, w_sia=0.7, w_pic=1.3, w_scr=0.2, w_sir=0.05)
    out = loss(*_views(model, ids, mask))
    assert isinstance(out, LossOutput)
    t = out.terms
    assert set(t) == {"mrl", "sia", "sia_attn", "sia_cka", "pic", "scr", "sir", "total", "pic_active_steps"}
    expected = 0.3 * t["mrl"] + 0.7 * (0.7 * t["sia"] + 1.3 * t["pic"]) + 0.2 * t["scr"] + 0.05 * t["sir"]
    assert out.loss.item() == pytest.approx(expected, rel=1e-5)
    assert t["total"] == pytest.approx(expected, rel=1e-5)
    assert t["sia"] == pytest.approx(t["sia_attn"] + t["sia_cka"], rel=1e-5)
    assert t["sir"] < 0 < t["scr"]
    assert t["pic_active_steps"] == 2.0


def test_a_few_sgd_steps_lower_the_loss() -> None:
    model = _model()
    model.train()
    ids, mask = _batch()
    loss = _loss()
    params = list(model.parameters()) + list(loss.parameters())
    opt = torch.optim.SGD(params, lr=0.005)

    def evaluate() -> float:
        torch.manual_seed(123)  # identical dropout masks before and after training
        with torch.no_grad():
            return loss(*_views(model, ids, mask)).loss.item()

    before = evaluate()
    for _ in range(8):
        out = loss(*_views(model, ids, mask))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    after = evaluate()
    assert after < before - 0.5, (before, after)  # 3.17 → 1.90 on CPU
    # The loss's own parameters (SIA projections, PIC projectors) were trained too.
    assert loss.sia is not None and loss.pic is not None
    assert not torch.equal(loss.sia.projection(1, 8).weight, torch.eye(HIDDEN, 8))


def test_normalize_terms_starts_every_term_at_unit_magnitude() -> None:
    model = _model()
    model.train()
    ids, mask = _batch()
    loss = _loss(normalize_terms=True, alpha=0.4, w_sia=1.0, w_pic=1.0, w_scr=0.1, w_sir=0.1, ema_decay=0.9)
    out = loss(*_views(model, ids, mask))
    # First step: each term divided by its own magnitude → ±1 (SIR is negative).
    assert out.loss.item() == pytest.approx(0.4 + 0.6 * (1.0 + 1.0) + 0.1 - 0.1, rel=1e-5)
    assert bool(loss.term_scale_ready.all())
    first = {name: loss.term_scale[i].item() for i, name in enumerate(TERM_NAMES)}
    assert first["mrl"] == pytest.approx(out.terms["mrl"], rel=1e-5)
    assert first["sir"] == pytest.approx(-out.terms["sir"], rel=1e-5)
    # Second step: EMA update with decay 0.9.
    out2 = loss(*_views(model, ids, mask))
    assert loss.term_scale[0].item() == pytest.approx(0.9 * first["mrl"] + 0.1 * out2.terms["mrl"], rel=1e-5)
    # Eval mode leaves the scales alone.
    loss.eval()
    scales = loss.term_scale.clone()
    loss(*_views(model, ids, mask))
    assert torch.equal(loss.term_scale, scales)
    # The scale is a buffer: it is checkpointed.
    assert "term_scale" in loss.state_dict()


def test_disabled_terms_are_not_computed() -> None:
    model = _model()
    model.train()
    ids, mask = _batch()
    only_mrl = MIPICObjective.from_config(MIPICSection(dims=[8, 32], alpha=1.0, w_scr=0.0, w_sir=0.0), HIDDEN, LAYERS)
    assert _loss(alpha=1.0).sia is None and _loss(w_pic=0.0).pic is None  # a zero weight builds no term
    out = only_mrl(*_views(model, ids, mask))
    assert set(out.terms) == {"mrl", "total"}
    assert out.loss.item() == pytest.approx(out.terms["mrl"], rel=1e-6)
    assert only_mrl.sia is None and only_mrl.pic is None and list(only_mrl.parameters()) == []


def test_set_progress_drives_pic_schedule() -> None:
    loss = _loss(pic_progressive=True)
    assert loss.pic is not None
    loss.set_progress(0.0)
    assert loss.pic.num_active_steps == 1
    loss.set_progress(0.5)
    assert loss.pic.num_active_steps == 2
    with pytest.raises(ValueError, match=re.escape("fraction must be in [0, 1], got -0.1")):
        loss.set_progress(-0.1)


def test_rejects_bad_arguments() -> None:
    mrl = MatryoshkaInfoNCELoss((8, 32))
    with pytest.raises(ValueError, match=re.escape("alpha must be in [0, 1], got 1.5")):
        MIPICLoss(HIDDEN, mrl, alpha=1.5)
    with pytest.raises(ValueError, match=re.escape("ema_decay must be in [0, 1), got 1.0")):
        MIPICLoss(HIDDEN, mrl, ema_decay=1.0)
    with pytest.raises(ValueError, match=re.escape("w_pic must be finite and >= 0, got -1.0")):
        MIPICLoss(HIDDEN, mrl, w_pic=-1.0)
    with pytest.raises(ValueError, match=re.escape("dims must be <= hidden_size (32), got [8, 64]")):
        MIPICLoss(HIDDEN, MatryoshkaInfoNCELoss((8, 64)))
    with pytest.raises(
        ValueError, match=re.escape("chain dims must be <= hidden_size (32), got [(8, 1), (64, 2)]")
    ):
        MIPICLoss(HIDDEN, mrl, pic=PICLoss([(8, 1), (64, 2)]))
    with pytest.raises(ValueError, match=re.escape("pic is given but its coefficient is 0 (alpha=1.0, w_pic=1.0)")):
        MIPICLoss(HIDDEN, mrl, pic=PICLoss([(8, 1), (32, 2)]), alpha=1.0)
    with pytest.raises(ValueError, match=r"^sia_dims is empty"):
        MIPICObjective.from_config(MIPICSection(dims=[32], sia_layers=[1], w_scr=0.0, w_sir=0.0), HIDDEN, LAYERS)
    with pytest.raises(ValueError, match=r"^mic_dims must contain a dim below hidden_size"):
        MIPICObjective.from_config(MIPICSection(dims=[32]), HIDDEN, LAYERS)
    model = _model()
    ids, mask = _batch()
    a, b = _views(model, ids, mask)
    wrong = MIPICLoss(16, MatryoshkaInfoNCELoss((8, 16)))
    with pytest.raises(
        ValueError, match=re.escape("views have hidden size 32 and 32, expected hidden_size=16")
    ):
        wrong(a, b)
