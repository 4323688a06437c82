"""Adaptive depth on a live server: idle → the deepest exit; 3x the saturation of layer 6 → shallower exits,
shed with 429 + Retry-After where even layer 1 would be late, never a 5xx. Loopback, bounded in count and time."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from bench.adaptive import AdaptiveConfig, batches
from bench.loadgen import Target, closed_loop, open_loop
from bench.servers import mipic_server

pytestmark = pytest.mark.integration


def test_auto_depth_degrades_depth_not_availability(minilm_dir: Path) -> None:
    cfg = AdaptiveConfig(texts_per_request=8)
    work = batches(cfg)
    auto = {"dimensions": 384, "layer": "auto", "min_layer": 1, "max_latency_ms": 250}
    with mipic_server(minilm_dir) as (url, _pid):
        fixed = Target(url, "/v1/embeddings", {"dimensions": 384, "layer": 6})
        asyncio.run(closed_loop(fixed, work, 4, 1.0))  # warm
        saturation = asyncio.run(closed_loop(fixed, work, 4, 3.0)).summary()["achieved_rps"]
        target = Target(url, "/v1/embeddings", auto)
        time.sleep(5.0)  # the server remembers ~2 s of arrivals: the saturation run must fade first
        calm = asyncio.run(open_loop(target, work, 0.3 * saturation, 4.0, 200))
        busy = asyncio.run(open_loop(target, work, 3.0 * saturation, 5.0, 1500, seed=1))
    assert set(calm.statuses) == {200}
    assert calm.served_layers["6"] == calm.ok  # no needless degradation
    assert set(busy.statuses) <= {200, 429}, busy.statuses  # no 5xx, no transport errors
    assert busy.retry_after_missing == 0
    served = sum(busy.served_layers.values())
    assert served == busy.ok > 0
    # three times what layer 6 can do: most answers come from shallower exits
    assert busy.served_layers["6"] < 0.5 * served, busy.served_layers
    # and the server answered more requests per second than layer 6's saturation
    assert busy.ok / busy.duration_s > 1.2 * saturation, (busy.ok / busy.duration_s, saturation)
