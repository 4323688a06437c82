"""Bounded memory, on the real process: `mipic serve` with the packaged MiniLM and default settings stays under
1.2 GB RSS while it serves the largest request the default limits admit (which keeps it saturated throughout), and
comes back within 300 MB of its idle RSS afterwards (the benchmark, bench/memory.py, does the same at the full depth
and records it).

Layer 2 keeps the run short; memory does not grow with depth once one arena serves every stage (before,
one arena per stage kept each stage's peak: 2.2 GB at layer 6 with the same request)."""

from __future__ import annotations

from pathlib import Path

import pytest
from bench.memory import PEAK_LIMIT_MB, SETTLE_LIMIT_MB, MemoryConfig, served_memory

pytestmark = pytest.mark.integration


def test_largest_request_under_saturation_stays_within_the_memory_bound(minilm_dir: Path) -> None:
    from mipic.service.settings import Settings

    result = served_memory(minilm_dir, "shared", MemoryConfig(layer=2, settle_s=2.0, timeout_s=400.0))
    assert result["statuses"] == {"200": 1}
    assert result["texts_per_request"] == Settings().max_inputs_per_request and result["tokens_per_text"] == 256
    assert result["peak_mb"] > result["before_mb"] + 100  # the load really ran through the model
    assert result["peak_mb"] <= PEAK_LIMIT_MB, result
    assert result["after_mb"] - result["before_mb"] <= SETTLE_LIMIT_MB, result
