"""Adaptive depth's policy on synthetic queue states: deepest exit within the target, bounds always kept,
429 only when the queue (not the request's own size) makes even min_layer late."""

from __future__ import annotations

import pytest

from mipic.service.engine.depth import (
    DepthBounds,
    LoadMeter,
    QueueState,
    RateMeter,
    StageCosts,
    choose_layer,
    expected_seconds,
    utilisation,
)

# MiniLM's measured stage ms (embeddings, layers 1..6) from the shipped manifest
COSTS = StageCosts.from_stage_ms([0.877, 23.645, 23.701, 24.204, 24.001, 23.898, 23.318], 6)
SPU = 140e-6  # seconds per full-depth token, as measured on a 2-core EPYC
BOUNDS = DepthBounds(1, 6, 0.250)


def state(queued_tokens: float, running: float = 0.0) -> QueueState:
    return QueueState(queued_units=queued_tokens, running_units_left=running, seconds_per_unit=SPU, fixed_s=0.004)


def test_stage_costs_are_cumulative_and_full_depth_is_one() -> None:
    assert COSTS.cumulative[6] == pytest.approx(1.0)
    assert COSTS.cumulative[1] == pytest.approx((0.877 + 23.645) / 143.644, rel=1e-4)
    assert list(COSTS.cumulative[1:]) == sorted(COSTS.cumulative[1:])
    assert COSTS.units(10, 3) == pytest.approx(10 * COSTS.cumulative[3])
    uniform = StageCosts.from_stage_ms([], 4)  # no timings measured: equal layers, a cheap embedding stage
    assert uniform.cumulative[2] == pytest.approx((0.04 + 2) / 4.04)


def test_idle_server_serves_max_layer() -> None:
    choice = choose_layer(state(0), COSTS, tokens=16 * 20, bounds=BOUNDS)
    assert choice.layer == 6 and choice.meets_target and not choice.blocked_by_queue
    assert choice.expected_s == pytest.approx(0.004 + 320 * SPU)


def test_the_deeper_the_queue_the_shallower_the_exit() -> None:
    layers = [choose_layer(state(q), COSTS, 320, BOUNDS).layer for q in (0, 600, 1000, 1200, 1300, 1400)]
    assert layers == sorted(layers, reverse=True)
    assert layers[0] == 6 and layers[-1] == 1
    # each choice is the deepest that fits 0.8 x target: one layer deeper would not
    for q in (600, 1000, 1200, 1300):
        c = choose_layer(state(q), COSTS, 320, BOUNDS)
        assert c.meets_target and c.expected_s <= 0.2
        if c.layer < 6:
            assert expected_seconds(state(q), COSTS, 320, c.layer + 1) > 0.2


def test_running_batch_counts_like_queued_work() -> None:
    assert (choose_layer(state(0, running=1200), COSTS, 320, BOUNDS).layer
            == choose_layer(state(1200), COSTS, 320, BOUNDS).layer)


def test_bounds_are_never_left() -> None:
    narrow = DepthBounds(3, 4, 0.250)
    assert choose_layer(state(0), COSTS, 320, narrow).layer == 4  # idle: max_layer, not the last layer
    late = choose_layer(state(10_000), COSTS, 320, narrow)
    assert late.layer == 3 and not late.meets_target  # never below min_layer
    for q in range(0, 20_000, 500):
        assert 3 <= choose_layer(state(q), COSTS, 320, narrow).layer <= 4


def test_refused_only_when_the_queue_is_the_reason() -> None:
    # 3,000 queued full-depth tokens = 0.42 s of work ahead: even layer 1 misses 250 ms because of the queue
    c = choose_layer(state(3000), COSTS, 320, BOUNDS)
    assert c.layer == 1 and c.blocked_by_queue
    # a request too large to make the target on an idle server is served at min_layer, not refused forever
    huge = choose_layer(state(0), COSTS, 20_000, BOUNDS)
    assert huge.layer == 1 and not huge.meets_target and not huge.blocked_by_queue


def test_headroom_trades_depth_for_safety() -> None:
    s = state(900)
    assert choose_layer(s, COSTS, 320, BOUNDS, headroom=1.0).layer > choose_layer(s, COSTS, 320, BOUNDS,
                                                                                  headroom=0.5).layer


def test_measured_correction_scales_every_expectation() -> None:
    s = state(600)
    plain = choose_layer(s, COSTS, 320, BOUNDS)
    late = choose_layer(s, COSTS, 320, BOUNDS, correction=2.0)  # requests took twice what was expected
    assert late.layer < plain.layer
    assert late.expected_s == pytest.approx(2.0 * expected_seconds(s, COSTS, 320, late.layer))
    assert choose_layer(state(1000), COSTS, 320, BOUNDS, correction=0.5).layer == 6  # faster than modelled


def test_sustained_load_picks_the_exit_the_traffic_can_afford() -> None:
    """An empty queue is not enough: auto traffic of 12,000 tokens/s keeps 1.68 of the compute busy at layer 6
    and 0.29 at layer 1 (SPU 140 µs), so with 0.7 allowed the deepest affordable exit is layer 2 (0.56)."""
    busy = QueueState(0.0, 0.0, SPU, 0.004, auto_tokens_per_s=12_000, capacity_seconds_per_unit=SPU)
    assert utilisation(busy, COSTS, 6) == pytest.approx(12_000 * SPU)
    assert utilisation(busy, COSTS, 2) == pytest.approx(12_000 * SPU * COSTS.cumulative[2])
    assert choose_layer(busy, COSTS, 320, BOUNDS, max_utilisation=0.7).layer == 2
    assert choose_layer(busy, COSTS, 320, BOUNDS, max_utilisation=1.0).layer == 3  # 0.85 (layer 4: 1.13)
    calm = QueueState(0.0, 0.0, SPU, 0.004, auto_tokens_per_s=3_000, capacity_seconds_per_unit=SPU)
    assert choose_layer(calm, COSTS, 320, BOUNDS, max_utilisation=0.7).layer == 6  # 0.42: no degradation
    # fixed-layer traffic is work that auto requests cannot shrink: it comes off their share
    # (0.42 fixed + 0.42 w(l) <= 0.7 → w(l) <= 0.67: layer 3, 0.50; layer 4 is 0.671)
    mixed = QueueState(0.0, 0.0, SPU, 0.004, fixed_units_per_s=3_000, auto_tokens_per_s=3_000,
                       capacity_seconds_per_unit=SPU)
    assert choose_layer(mixed, COSTS, 320, BOUNDS, max_utilisation=0.7).layer == 3
    # min_layer is served whatever the load (the queue check alone can refuse it)
    assert choose_layer(busy, COSTS, 320, DepthBounds(4, 6, 0.25), max_utilisation=0.7).layer == 4


def test_time_already_spent_counts_against_the_target_and_can_refuse() -> None:
    idle = QueueState(0.0, 0.0, SPU, 0.004, capacity_seconds_per_unit=SPU)
    assert choose_layer(idle, COSTS, 320, BOUNDS).layer == 6
    # 170 ms spent in the event loop and tokenizer already: 30 ms of the 200 ms budget (0.8 · 250 ms) left, and
    # 320 tokens take 49 ms through layer 6, 27 ms through layer 3
    late = choose_layer(idle, COSTS, 320, BOUNDS, waited_s=0.17)
    assert late.layer == 3 and late.meets_target
    assert late.expected_s == pytest.approx(0.17 + expected_seconds(idle, COSTS, 320, 3))
    # spent past the target: refused (429), though the request alone would fit
    gone = choose_layer(idle, COSTS, 320, BOUNDS, waited_s=0.3)
    assert gone.layer == 1 and not gone.meets_target and gone.blocked_by_queue


def test_load_meter_averages_the_event_loop_lag() -> None:
    load = LoadMeter(max_wait_s=0.002)
    load.loop_lagged(0.2)
    load.loop_lagged(-0.001)  # a timer cannot fire early: clock noise counts as no lag
    assert load.loop_lag_s == pytest.approx(0.05)


def test_rate_meter_is_unbiased_from_the_start_of_a_burst_and_forgets_after_its_window() -> None:
    meter = RateMeter(window_s=2.0, min_span_s=0.5)
    assert meter.rate(0.0) == 0.0
    for i in range(60):  # 100 events/s of 10 units, starting from idle: 1,000 units/s at once
        meter.add(10.0, 5.0 + i * 0.01)
    assert meter.rate(5.6) == pytest.approx(600 / 0.6, rel=1e-9)  # 0.6 s of traffic: its own span, not the window
    for i in range(60, 400):
        meter.add(10.0, 5.0 + i * 0.01)
    assert meter.rate(9.0) == pytest.approx(1_000, rel=0.01)  # a full window of it
    assert meter.rate(10.0) == pytest.approx(500, rel=0.01)  # a second after the load stopped: half the window
    assert meter.rate(11.0) == 0.0  # forgotten after a window
    for i in range(11):  # 0.1 s of traffic, younger than min_span: divided by min_span, not by 0.1 s
        meter.add(10.0, 30.0 + i * 0.01)
    assert meter.rate(30.1) == pytest.approx(110 / 0.5)


def test_load_meter_assembles_the_queue_state_in_one_place() -> None:
    load = LoadMeter(max_wait_s=0.002)
    load.assume(SPU)
    load.queued_units = 500.0  # the batcher's queue
    # the engine's reports: arrivals
    load.fixed_units.add(100.0, 0.0)
    load.auto_tokens.add(40.0, 0.0)
    load.batch_started(1_000.0, now=10.0)  # expected to take 1,000 · SPU = 0.14 s
    s = load.state(10.0 + 0.035)
    assert s.queued_units == 500.0 and s.running_units_left == pytest.approx(750.0)  # a quarter of it ran
    assert s.fixed_s == pytest.approx(0.002) and s.seconds_per_unit == s.capacity_seconds_per_unit == SPU
    assert s.fixed_units_per_s == pytest.approx(load.fixed_units.rate(10.035))
    assert s.auto_tokens_per_s == pytest.approx(load.auto_tokens.rate(10.035))
    load.batch_ended()
    assert load.state(10.05).running_units_left == 0.0
    load.batch_timed(1_000.0, 0.28, rows=8)  # twice as slow as assumed: only the latency estimate moves (small batch)
    assert load.seconds_per_unit == pytest.approx(SPU + 0.2 * SPU) and load.capacity_seconds_per_unit == SPU
    load.batch_timed(1_000.0, 0.28, rows=32)
    assert load.capacity_seconds_per_unit == pytest.approx(SPU + 0.2 * SPU)
    load.batch_timed(0.0, 1.0, rows=32)  # a batch without work units says nothing about speed
    assert load.capacity_seconds_per_unit == pytest.approx(SPU + 0.2 * SPU)


def test_bad_bounds_are_a_bug_not_a_choice() -> None:
    with pytest.raises(ValueError, match="outside"):
        choose_layer(state(0), COSTS, 10, DepthBounds(4, 3, 0.25))
    with pytest.raises(ValueError, match="outside"):
        choose_layer(state(0), COSTS, 10, DepthBounds(1, 7, 0.25))
