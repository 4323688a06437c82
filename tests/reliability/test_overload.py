"""Overload at ~8x capacity for a few seconds: shed with 429 + Retry-After, zero 5xx, bounded latency
and memory for admitted requests, full throughput afterwards. Loopback, bounded in count and time."""

from __future__ import annotations

from pathlib import Path

import pytest
from bench.overload import run_soak

pytestmark = pytest.mark.integration


def test_overload_sheds_and_recovers(minilm_dir: Path) -> None:
    r = run_soak(minilm_dir, factor=8.0, texts_per_request=16, queue_size=64, capacity_seconds=3.0,
                 burst_seconds=5.0, max_requests=1500)
    burst = r.burst["statuses"]
    assert isinstance(burst, dict)
    assert set(burst) <= {200, 429}, burst  # no 5xx, no transport errors, no timeouts
    assert burst.get(429, 0) > 0 and burst.get(200, 0) > 0
    assert r.burst["retry_after_missing"] == 0
    capacity = float(r.capacity["ok_per_s"])  # type: ignore[arg-type]
    # admitted work waits behind at most the running batch and a full queue (64 inputs = 4 requests),
    # then runs in a batch of that size: bounded by the queue, not by the offered load
    bound_ms = 1000.0 * max(2.0, 12 / capacity)
    # the server's own time (x-total-time: admission, tokenizer, queue, compute) is what the queue bounds;
    # the client's time adds the load generator, which shares these 2 cores with the server, so it gets
    # twice the room (one CI run saw a client p99 of 5.3 s among ~50 answers, cause not seen; here 0.9 s)
    assert r.burst["ok_server_latency"]["p95_ms"] < bound_ms  # type: ignore[index]
    assert r.burst["ok_latency"]["p95_ms"] < 2 * bound_ms  # type: ignore[index]
    assert r.rss_mb["peak"] - r.rss_mb["before"] < 300
    assert set(r.recovery["statuses"]) == {200}  # type: ignore[arg-type]
    assert float(r.recovery["ok_per_s"]) > 0.7 * capacity  # type: ignore[arg-type]
