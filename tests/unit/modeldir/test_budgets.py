"""Budget table: relative cost from stage times, the Pareto set, measured stage times of a real model."""

from __future__ import annotations

from pathlib import Path

import pytest

from mipic.modeldir.budgets import build_table, measure_stage_ms, pareto_flags, relative_cost
from mipic.modeldir.runner import LoadedModel


def test_relative_cost_counts_embeddings_layers_and_head_rows() -> None:
    stage_ms = [1.0, 2.0, 2.0, 2.0]  # embeddings, layers 1..3
    assert relative_cost(stage_ms, 0.0, 3, 32, 32) == pytest.approx(1.0)
    assert relative_cost(stage_ms, 0.0, 1, 32, 32) == pytest.approx(3 / 7)
    assert relative_cost(stage_ms, 1.0, 1, 16, 32) == pytest.approx((3 + 0.5) / 8)


def test_pareto_flags() -> None:
    points = [(0.2, 0.5), (0.2, 0.6), (0.5, 0.6), (0.5, 0.8), (1.0, 0.7), (1.0, 0.9)]
    assert pareto_flags(points) == [False, True, False, True, False, True]


def test_build_table_marks_the_front_and_keeps_scores() -> None:
    scores = {(8, 1): {"a": 0.4, "b": 0.6}, (32, 1): {"a": 0.5, "b": 0.5}, (32, 3): {"a": 0.9, "b": 0.8}}
    table = build_table(scores, {"a": "ap", "b": "ndcg@10"}, [1.0, 2.0, 2.0, 2.0], 0.0, 32, eval_items=10)
    rows = {(r.dim, r.layer): r for r in table.rows}
    assert rows[(32, 3)].relative_cost == 1.0 and rows[(32, 3)].pareto
    assert rows[(8, 1)].quality == pytest.approx(0.5) and rows[(8, 1)].pareto  # same cost, same quality as d32 l1
    assert rows[(32, 1)].scores == {"a": 0.5, "b": 0.5}
    assert table.eval_items == 10 and table.timing_machine


def test_measured_stage_times_grow_with_depth(tiny_model_dir: Path) -> None:
    model = LoadedModel(tiny_model_dir, provider="cpu")
    stage_ms, head_ms = measure_stage_ms(model, batch_size=4, seq_len=8, repeats=3)
    assert len(stage_ms) == 4 and all(t > 0 for t in stage_ms)
    assert head_ms == 0.0  # no heads
