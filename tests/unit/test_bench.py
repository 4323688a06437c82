"""Benchmark helpers: statistics, FLOP formulas, Pareto fronts, load schedule, tables, target checks (no timing)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from bench.common import (
    EncoderShape,
    encoder_flops,
    fmt_cell,
    layer_flops,
    make_texts,
    md_table,
    pareto_front,
    percentiles,
    write_results,
)
from bench.engine import EngineGrid, markdown, scaling_checks
from bench.loadgen import LoadResult, poisson_schedule
from bench.quality import analyse, load_grids, pareto_3d
from bench.run_all import targets
from bench.served import saturation

MINILM = EncoderShape(hidden=384, intermediate=1536)


def test_percentiles_in_ms() -> None:
    p = percentiles([i / 1000 for i in range(1, 101)])  # 1..100 ms
    assert p["p50_ms"] == pytest.approx(50.5)
    assert p["p95_ms"] == pytest.approx(95.05)
    assert p["p99_ms"] == pytest.approx(99.01)
    assert p["mean_ms"] == pytest.approx(50.5)
    assert p["max_ms"] == pytest.approx(100.0)


def test_percentiles_of_nothing_are_zero() -> None:
    assert percentiles([]) == {"p50_ms": 0.0, "p95_ms": 0.0, "p99_ms": 0.0, "mean_ms": 0.0, "max_ms": 0.0}


def test_layer_flops_linear_and_attention_parts() -> None:
    # linear: 2·(4·384² + 2·384·1536)·T = 3,538,944·T; attention: 4·T²·384
    assert layer_flops(MINILM, 1) == 3_538_944 + 4 * 384
    assert layer_flops(MINILM, 256) == 3_538_944 * 256 + 4 * 256 * 256 * 384


def test_minilm_costs_about_21_mflop_per_token() -> None:
    per_token = encoder_flops(MINILM, [1], 6)
    assert per_token == pytest.approx(21.2e6, rel=0.01)
    # sequences add up; the attention part makes long ones cost more per token
    assert encoder_flops(MINILM, [16, 16], 3) == 2 * 3 * layer_flops(MINILM, 16)
    assert encoder_flops(MINILM, [256], 1) / 256 > encoder_flops(MINILM, [16], 1) / 16


def test_pareto_front_keeps_only_undominated_points_sorted_by_cost() -> None:
    costs = [1.0, 2.0, 2.0, 3.0, 4.0, 0.5]
    scores = [0.5, 0.7, 0.6, 0.65, 0.9, 0.5]
    # 0.5-cost point beats the 1.0-cost one (same score, cheaper); (2, 0.6) and (3, 0.65) are dominated by (2, 0.7)
    assert pareto_front(costs, scores) == [5, 1, 4]


def test_pareto_front_rejects_mismatched_lengths() -> None:
    with pytest.raises(ValueError, match="same length"):
        pareto_front([1.0], [1.0, 2.0])


def test_pareto_3d_counts_dim_as_a_cost() -> None:
    costs, dims, scores = [1.0, 1.0, 2.0], [64, 384, 64], [0.7, 0.8, 0.7]
    # wider vector at the same compute is on the front when it scores higher; (2, 64, 0.7) is dominated
    assert pareto_3d(costs, dims, scores) == [0, 1]


def test_md_table_aligns_numbers_right_and_formats_by_size() -> None:
    table = md_table(["name", "texts/s", "ratio"], [["a", 12345.6, 0.1234], ["b|c", 9.876, 2]])
    lines = table.splitlines()
    assert lines[0] == "| name | texts/s | ratio |"
    assert lines[1] == "|---|---:|---:|"
    assert lines[2] == "| a | 12,346 | 0.123 |"
    assert lines[3] == "| b\\|c | 9.88 | 2 |"


def test_fmt_cell_handles_nan_and_none() -> None:
    assert fmt_cell(float("nan")) == "n/a"
    assert fmt_cell(None) == ""
    assert fmt_cell(55.55) == "55.5"


def test_write_results_writes_json_and_markdown(tmp_path: Path) -> None:
    path = write_results("x", {"a": 1}, "| t |\n", tmp_path)
    assert path == tmp_path / "x.md"
    assert json.loads((tmp_path / "x.json").read_text()) == {"a": 1}
    assert path.read_text() == "| t |\n"


def test_make_texts_is_deterministic_with_the_asked_word_count() -> None:
    a, b = make_texts(3, 16, seed=1), make_texts(3, 16, seed=1)
    assert a == b
    assert all(len(t.split()) == 14 for t in a)  # 16 tokens = 14 words + [CLS] + [SEP]


def test_poisson_schedule_is_bounded_in_count_and_time() -> None:
    s = poisson_schedule(100.0, 10.0, max_requests=50, seed=0)
    assert len(s) == 50
    assert s == sorted(s)
    long = poisson_schedule(100.0, 20.0, max_requests=100_000, seed=0)
    assert all(0 < t < 20.0 for t in long)
    assert len(long) == pytest.approx(2000, rel=0.1)  # rate × duration
    with pytest.raises(ValueError, match="positive"):
        poisson_schedule(0.0, 1.0, 10)


def test_load_result_summary_counts_only_ok_answers() -> None:
    r = LoadResult(offered_rps=10.0, texts_per_request=8, duration_s=2.0, sent=4)
    r.statuses.update({200: 3, 429: 1})
    r.latencies_s += [0.01, 0.02, 0.03]
    s = r.summary()
    assert s["ok"] == 3
    assert s["achieved_texts_per_s"] == 12.0
    assert s["offered_texts_per_s"] == 80.0
    assert s["statuses"] == {"200": 3, "429": 1}
    assert s["latency"]["p50_ms"] == pytest.approx(20.0)
    assert s["server_latency"] is None  # no x-total-time seen (a peer server)


def test_adaptive_report_separates_the_admitted_and_the_servers_own_time() -> None:
    from bench.adaptive import markdown, summarise, target_rows
    from bench.common import environment

    r = LoadResult(offered_rps=100.0, texts_per_request=8, duration_s=8.0, sent=10)
    r.statuses.update({200: 4, 429: 6})
    r.latencies_s += [0.05, 0.1, 0.2, 0.3]  # client side: one of the four admitted is late
    r.server_latencies_s += [0.04, 0.08, 0.15, 0.2]
    r.served_layers.update({"1": 4})
    s = summarise(r, 0.25, {1: 0.75, 6: 0.82}) | {"factor": 5.0, "mode": "auto"}
    assert s["ok_within_target_share"] == pytest.approx(0.3) and s["admitted_within_target_share"] == 0.75
    assert s["server_latency"]["max_ms"] == pytest.approx(200.0) and s["expected_index_quality"] == 0.75
    payload = {"config": {"target_ms": 250.0, "texts_per_request": 8, "tokens": 16, "dim": 384, "seconds": 8.0},
               "env": environment(), "runs": [s], "saturation_rps": 20.0, "load_at_start": {}, "index_quality": {1: 0.75}}
    [row] = target_rows(payload)
    assert row[1] == "75.0 % of 4 200s, 6 x 429, 0 x 5xx" and row[2] == "**no**"
    table = markdown(payload)
    assert "| 5x | auto | 800 | 30.0 | 75.0 | 150 | 297 | 115 / 198 | 0 | 6 | 0 | 1: 4 | 0.750 |" in table


def test_engine_grid_caps_batches_as_the_batcher_does() -> None:
    grid = EngineGrid(batches=(1, 8, 32, 128))  # the server's defaults: 16384 tokens, 32·256² pairs, 128 rows
    assert grid.batches_for(16) == [1, 8, 32, 128]
    assert grid.batches_for(128) == [1, 8, 32, 128]
    assert grid.batches_for(256) == [1, 8, 32]  # token pairs: 32 rows of 256
    assert EngineGrid(batches=(1, 8, 32, 128), max_batch_token_pairs=2**30).batches_for(256) == [1, 8, 32, 64]


def _point(precision: str, length: int, batch: int, dim: int, layer: int, tps: float) -> dict[str, object]:
    return {"precision": precision, "length": length, "batch": batch, "dim": dim, "layer": layer, "texts_per_s": tps,
            "tokens_per_s": tps * length, "gflops": 1.0, "frac_of_peak": 0.6, "latency": percentiles([0.01])}


def test_scaling_checks_compare_with_ideal_l_over_k() -> None:
    pts = [_point("fp32", 16, 32, 384, k, tps) for k, tps in ((1, 500.0), (3, 150.0), (6, 100.0))]
    checks = {c["layer"]: c for c in scaling_checks(pts, 6)}
    assert checks[1]["ideal_texts_per_s"] == 600.0
    assert checks[1]["efficiency"] == pytest.approx(500 / 600)
    assert checks[1]["meets_target"]
    assert checks[3]["efficiency"] == pytest.approx(0.75)
    assert not checks[3]["meets_target"]
    assert checks[6]["efficiency"] == 1.0


def test_engine_markdown_has_one_table_per_precision_and_length() -> None:
    pts = [_point(p, t, b, 384, k, 100.0 / k) for p in ("fp32", "int8") for t in (16, 256) for b in (1, 32)
           for k in (1, 6)]
    payload = {"env": {"cpu": "cpu", "cores": 2, "cpu_flags": [], "python": "3", "versions": {"onnxruntime": "1",
                                                                                          "numpy": "2"}, "commit": "x"},
               "load_at_start": {"loadavg": [0.1, 0.1, 0.1]}, "points": pts, "num_layers": 6, "peak_gflops": 100.0,
               "model": "m@1", "shape": {"hidden": 384, "intermediate": 1536}, "scaling": scaling_checks(pts, 6)}
    text = markdown(payload)
    assert text.count("### fp32") == 2 and text.count("### int8") == 2
    assert "Early-exit scaling" in text
    assert "60%" in text  # frac_of_peak of the largest batch


def test_saturation_is_the_best_achieved_point() -> None:
    pts = [{"achieved_texts_per_s": x} for x in (10.0, 30.0, 20.0)]
    assert saturation(pts)["achieved_texts_per_s"] == 30.0


def test_quality_analysis_builds_mean_scores_and_fronts() -> None:
    grid = {"model": "m", "layers": [1, 2], "dims": [16, 64], "main_metrics": {"a": "acc", "b": "ap"},
            "scores": {"a": {"acc": [[0.5, 0.6], [0.7, 0.9]]}, "b": {"ap": [[0.5, 0.8], [0.7, 0.7]]},
                       "geometry": {"uniformity": [[1, 1], [1, 1]]}}}
    res = analyse({"v": grid}, engine=None)
    v = res["variants"]["v"]
    assert v["mean"] == [[0.5, 0.7], [0.7, 0.8]]
    assert [(p["dim"], p["layer"]) for p in v["front_cost_score"]] == [(64, 1), (64, 2)]
    assert {(p["dim"], p["layer"]) for p in v["front_cost_dim_score"]} == {(16, 1), (64, 1), (16, 2), (64, 2)}


def test_targets_table_reads_result_files(tmp_path: Path) -> None:
    pts = [_point("fp32", 16, 128, 384, k, 600.0 / k) for k in range(1, 7)]
    pts += [_point("fp32", 256, 32, 384, k, 60.0 / k if k > 1 else 40.0) for k in range(1, 7)]
    files: dict[str, object] = {
        "engine": {"num_layers": 6, "points": pts, "scaling": scaling_checks(pts, 6), "served_precision": "fp32"},
        "served": {"results": [
            {"dim": 384, "layer": 6, "served_over_offline": 0.93, "saturation_texts_per_s": 372.0,
             "offline_texts_per_s": 400.0, "saturation_loadgen_cpu_pct": 31.0, "one_request_ms": 20.0,
             "p99_over_one_request": 3.5, "half_saturation": {"latency": percentiles([0.02, 0.03, 0.07])}},
            {"dim": 64, "layer": 1, "served_over_offline": 0.7, "saturation_texts_per_s": 1400.0,
             "offline_texts_per_s": 2000.0}]},
        "memory": {"limits_mb": {"peak": 1200.0, "settle": 300.0}, "served": [
            {"arena": "shared", "clients": 2, "texts_per_request": 256, "tokens_per_text": 256, "peak_mb": 700.0,
             "before_mb": 300.0, "after_mb": 450.0, "peak_ok": True, "settle_ok": True},
            {"arena": "per-session", "peak_mb": 2200.0}]},
        "precision": {"tolerance": 0.005, "default_cpu_precision": "fp32",
                      "variants": {"fp32": {}, "int8": {"quality_ok": False}}},
    }
    for name, payload in files.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(payload))
    rows = {r[0]: r[1:] for r in targets(tmp_path)}
    assert rows["(issue 6) full budget fp32 ≥ 50% of GEMM peak, ~16 tokens, batch 128"] == ["60% (1.0 GFLOP/s)", "yes"]
    scaling = rows["layer k ≥ 0.8·(L/k)·layer L at every length and batch the batcher forms (fp32)"]
    assert scaling[0].startswith("worst 0.67 (k=1, ~256 tokens, batch 32") and scaling[1] == "no"
    served = rows["served ≥ 90% of offline at saturation, d384/l6 (load generator on the same 2 cores)"]
    assert served == ["93% (372 of 400 texts/s; load generator 31% of a core)", "yes"]
    assert rows["served ≥ 75% of offline at saturation, d64/l1 (load generator on the same 2 cores)"][1] == "no"
    latency = rows["p99 ≤ 3× one request's batch at half saturation, d384/l6"]
    assert latency[0].endswith("vs 20.0 ms: 3.5×") and latency[1] == "no"
    peak = [v for k, v in rows.items() if k.startswith("peak RSS ≤ 1200 MB")]
    assert peak == [["700 MB (idle 300 MB)", "yes"]]  # the shared arena's row only
    assert rows["RSS back within 300 MB of its pre-load value"] == ["+150 MB (450 MB)", "yes"]
    default = rows["CPU default = fastest precision within 0.005 of fp32 on every suite and budget"]
    assert default == ["measured: fp32 (also within: none); code default: fp32", "yes"]
    assert rows["GPU: CUDA provider with fp16, batch 1–256 per budget"][1] == "n/a"


def test_agreement_flags_a_truncated_vector_that_is_not_renormalised() -> None:
    from bench.peers import agreement

    rng = np.random.default_rng(0)
    full = rng.standard_normal((3, 384))
    full /= np.linalg.norm(full, axis=1, keepdims=True)
    ref64 = full[:, :64] / np.linalg.norm(full[:, :64], axis=1, keepdims=True)
    out = agreement({"64": ref64.tolist()}, {"64": full[:, :64].tolist()})
    assert out["64"]["min_cosine"] == pytest.approx(1.0)
    assert out["64"]["max_norm_error"] > 0.3


def test_output_types_rank_as_clients_search_them() -> None:
    from bench.output_types import scores_for

    # binary: −Hamming distance (+ width); ubinary the same bits
    q = np.array([[0b11110000]], np.uint8)
    d = np.array([[0b11110000], [0b11110001], [0b00001111]], np.uint8)
    s = scores_for("ubinary", q, d)
    np.testing.assert_array_equal(s, [[8, 6, -8]])  # 8 − 2·Hamming
    np.testing.assert_array_equal(scores_for("binary", (q.astype(np.int16) - 128).astype(np.int8),
                                             (d.astype(np.int16) - 128).astype(np.int8)), s)
    # uint8: −squared Euclidean distance of the codes
    u = scores_for("uint8", np.array([[10, 20]], np.uint8), np.array([[10, 20], [13, 24]], np.uint8))
    np.testing.assert_allclose(u, [[0, -25]])
    # int8 and float: cosine
    c = scores_for("int8", np.array([[3, 4]], np.int8), np.array([[6, 8], [4, -3]], np.int8))
    np.testing.assert_allclose(c, [[1.0, 0.0]], atol=1e-12)


def test_precision_drops_and_the_default_rule() -> None:
    from bench.precision import choose_default, drops

    ref = {"main_metrics": {"s": "acc"}, "layers": [1, 2], "dims": [8, 16],
           "scores": {"s": {"acc": [[0.80, 0.90], [0.85, 0.95]]}}}
    other = {"scores": {"s": {"acc": [[0.81, 0.89], [0.84, 0.93]]}}}
    d = drops(ref, other)["s"]
    assert d["worst_drop"] == pytest.approx(0.02) and (d["layer"], d["dim"]) == (2, 16)
    assert d["budgets_over"] == 3 and d["budgets"] == 4  # 0.01, 0.01, 0.02 > 0.005
    variants = {"fp32": {"quality_ok": True, "speedup": 1.0}, "int8": {"quality_ok": False, "speedup": 1.7},
                "fp16": {"quality_ok": True, "speedup": 0.6}}
    assert choose_default(variants) == "fp32"  # the fast one fails quality, the passing one is slower
    variants["int8"]["quality_ok"] = True
    assert choose_default(variants) == "int8"


def test_noisy_encoder_moves_vectors_to_the_asked_cosine() -> None:
    from bench.precision import NoisyEncoder

    class Base:
        num_layers, hidden_size, dims, heads = 2, 384, [384], None

        def encode_all_layers(self, texts: list[str]) -> np.ndarray:
            return np.random.default_rng(1).standard_normal((2, len(texts), 384)).astype(np.float32)

    base = Base()
    x, y = base.encode_all_layers(["a"] * 200), NoisyEncoder(base, 0.999).encode_all_layers(["a"] * 200)
    cos = (x * y).sum(-1) / np.linalg.norm(x, axis=-1) / np.linalg.norm(y, axis=-1)
    assert float(cos.mean()) == pytest.approx(0.999, abs=2e-4)


def test_quality_keeps_the_same_variant_name_from_two_groups_apart(tmp_path: Path) -> None:
    grid = {"main_metrics": {"s": "m"}, "scores": {"s": {"m": [[0.5]]}}, "layers": [1], "dims": [16]}
    for where in ("ablations/mipic_s43", "steps600/mipic_s43", "single"):
        (tmp_path / where / "eval").mkdir(parents=True)
        (tmp_path / where / "eval" / "grid.json").write_text(json.dumps(grid))
    (tmp_path / "broken" / "eval").mkdir(parents=True)
    (tmp_path / "broken" / "eval" / "grid.json").write_text("{")
    assert sorted(load_grids(tmp_path)) == ["ablations/mipic_s43", "single", "steps600/mipic_s43"]


def test_spread_is_met_only_when_its_lower_end_meets_the_bound() -> None:
    from bench.ratios import Spread, paired_ratios

    s = paired_ratios([150.0, 120.0, 160.0, 155.0, 140.0], [100.0, 100.0, 100.0, 100.0, 100.0])
    assert s.median == pytest.approx(1.5) and s.low == pytest.approx(1.2) and s.high == pytest.approx(1.6)
    assert not s.met(1.5) and s.met(1.2)
    assert Spread((2.0, 1.0, 3.0)).text() == "2.00 (1.00–3.00)"
    with pytest.raises(ValueError, match="equal"):
        paired_ratios([1.0], [1.0, 2.0])


def test_rotation_gives_each_step_every_position_across_reps() -> None:
    from bench.ratios import rotated

    assert [rotated(list("abc"), rep) for rep in range(4)] == [
        ["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"], ["a", "b", "c"]]
    assert rotated([1, 2], 3) == [2, 1]


def test_ratio_table_pairs_each_rep_with_its_own_reference() -> None:
    from bench.ratios import RatiosConfig, ratio_table

    cfg = RatiosConfig(http_budgets=((384, 6), (64, 6), (64, 1)))
    values = {"mipic_http_d384_l6": [90.0, 80.0], "offline_d384_l6": [100.0, 100.0],
              "mipic_http_d64_l6": [100.0, 100.0], "offline_d64_l6": [110.0, 100.0],
              "mipic_http_d64_l1": [400.0, 500.0], "offline_d64_l1": [500.0, 500.0],
              "infinity_http_d384": [60.0, 40.0], "infinity_http_d64": [50.0, 50.0]}
    r = ratio_table(values, cfg)
    assert r["http_vs_infinity_d384_l6"].values == (1.5, 2.0)
    assert r["served_over_offline_d64_l1"].values == (0.8, 1.0)
    assert r["served_l1_over_l6_d64"].values == (4.0, 5.0)
    assert "http_vs_infinity_d64_l1" not in r  # Infinity has no early exit


def test_ratio_table_reports_the_multi_worker_server_against_the_same_references() -> None:
    from bench.ratios import RatiosConfig, ratio_table

    cfg = RatiosConfig(http_budgets=((64, 6), (64, 1)), extra_workers=(2,))
    values = {"mipic_http_d64_l6": [100.0, 100.0], "offline_d64_l6": [110.0, 100.0],
              "mipic_http_d64_l1": [400.0, 500.0], "offline_d64_l1": [500.0, 500.0],
              "mipic_w2_http_d64_l6": [110.0, 120.0], "mipic_w2_http_d64_l1": [480.0, 600.0],
              "infinity_http_d64": [50.0, 60.0]}
    r = ratio_table(values, cfg)
    assert r["w2_http_vs_infinity_d64_l6"].values == (2.2, 2.0)
    assert r["w2_served_over_offline_d64_l1"].values == (0.96, 1.2)
    assert r["w2_over_w1_d64_l6"].values == (1.1, 1.2)
    assert r["w2_served_l1_over_l6_d64"].values == (480 / 110, 5.0)
    assert r["http_vs_infinity_d64_l6"].values == (2.0, 100 / 60)  # the single process's own ratios unchanged


def test_profile_summary_groups_py_spy_stacks_by_thread() -> None:
    from bench.profile_served import summarize, thread_ids

    raw = ("thread (11): MainThread;run (asyncio/runners.py:118);send (uvicorn/h.py:5) 30\n"
           "thread (12): mipic-infer_0;run (mipic/modeldir/runner.py:162);Session.run (ort.py:406) 60\n"
           "thread (13): mipic-tok_0;encode (mipic/modeldir/tokenizer.py:84) 10\n")
    s = summarize(raw, top=3)
    assert s["samples"] == 100
    assert s["groups"]["inference worker"] == pytest.approx(0.6)
    assert s["groups"]["event loop (HTTP, JSON, batcher, metrics)"] == pytest.approx(0.3)
    assert s["self"]["tokenizer pool"] == [["encode (mipic/modeldir/tokenizer.py:84)", pytest.approx(0.1)]]
    assert s["mipic_inclusive"][0] == ["run (mipic/modeldir/runner.py:162)", pytest.approx(0.6)]
    assert thread_ids(raw) == {11: "thread (11): MainThread", 12: "thread (12): mipic-infer_0",
                               13: "thread (13): mipic-tok_0"}


def test_early_exit_ratio_is_per_rep_against_the_ideal_l_over_k() -> None:
    from bench.thread_pool import PoolConfig, early_exit, key

    cfg = PoolConfig(shapes=((16, (8,)),), layers=(1, 3, 6))
    reps = [{key(16, 8, 1): 1200.0, key(16, 8, 3): 380.0, key(16, 8, 6): 200.0},
            {key(16, 8, 1): 900.0, key(16, 8, 3): 400.0, key(16, 8, 6): 250.0}]
    ee = early_exit(reps, cfg)
    assert ee["~16 tok, B=8, l1 vs l6"].values == (1.0, 0.6)  # 1200/200/6, 900/250/6
    assert ee["~16 tok, B=8, l3 vs l6"].values == (0.95, 0.8)  # 380/200/2, 400/250/2
    assert not ee["~16 tok, B=8, l1 vs l6"].met(0.8) and ee["~16 tok, B=8, l3 vs l6"].met(0.8)


def test_md1_floor_matches_queueing_theory() -> None:
    """M/D/1 at utilisation 0.5: p99 about 4.3 service times; a lighter load has a lower floor."""
    from bench.served import md1_p99

    p99 = md1_p99(0.5)
    assert 4.0 < p99 < 4.7
    assert md1_p99(0.2) < p99 < md1_p99(0.8)
    with pytest.raises(ValueError, match="rho"):
        md1_p99(1.0)


def test_peer_ratios_are_taken_rep_by_rep_from_interleaved_repetitions() -> None:
    from bench.peers import merge_reps, point_ratio

    def engine(kind: str, tps: float) -> dict[str, Any]:
        return {"kind": kind, "points": [{"length": 16, "dim": 64, "layer": 6, "batch": 8, "iters": 2,
                                          "texts_per_s": tps, "batch_ms_p50": 8000 / tps}]}

    # rep 2 ran on a slow moment for both engines: per-rep ratios stay 2.0, 2.0, 2.0, 2.0, 1.0
    reps = [[engine("mipic", m), engine("st", s)] for m, s in ((200, 100), (100, 50), (220, 110), (180, 90),
                                                                (150, 150))]
    mipic, st = merge_reps(reps)
    assert mipic["reps"] == 5 and mipic["points"][0]["texts_per_s"] == 180.0  # median of 200 100 220 180 150
    assert mipic["points"][0]["texts_per_s_reps"] == [200, 100, 220, 180, 150]
    ratio = point_ratio(mipic["points"][0], st["points"][0])
    assert (ratio.median, ratio.low, ratio.high) == (2.0, 1.0, 2.0)  # not 180 / 100 = 1.8
    failed = merge_reps([[engine("mipic", 1)], [{"kind": "mipic", "error": "boom"}]])
    assert failed == [{"kind": "mipic", "error": "boom"}]
    single = engine("a", 10)["points"][0]
    ratio = point_ratio(single, engine("b", 5)["points"][0])
    assert (ratio.median, ratio.low, ratio.high) == (2.0, 2.0, 2.0)


def test_precision_speedup_is_taken_rep_by_rep_and_must_clear_one_at_the_lower_end() -> None:
    from bench.precision import choose_default, speedups

    fp32 = [[100.0, 10.0], [50.0, 5.0], [100.0, 10.0]]  # rep 2 ran on a slow moment for both
    fp16 = [[150.0, 10.0], [75.0, 5.0], [80.0, 8.0]]
    spread = speedups(fp32, fp16)
    med, lo, hi = spread.median, spread.low, spread.high
    assert med == pytest.approx(1.5 ** 0.5) and hi == pytest.approx(1.5 ** 0.5) and lo == pytest.approx(0.8)
    variants = {"fp32": {"quality_ok": True, "speedup": 1.0}, "fp16": {"quality_ok": True, "speedup": med,
                                                                      "speedup_low": lo}}
    assert choose_default(variants) == "fp32"  # faster at the median, not at the lower end
    variants["fp16"]["speedup_low"] = 1.05
    assert choose_default(variants) == "fp16"
