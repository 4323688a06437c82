"""Calibration at export: ranges measured through the served read-out, dropped when heads change it."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from tests.conftest import calibration_texts, random_heads

from mipic.modeldir.manifest import HeadsSpec, budget_key, load_manifest
from mipic.modeldir.runner import LoadedModel, Row
from mipic.training.export import attach_heads
from mipic.training.release import compute_calibration


def test_ranges_are_rounded_outwards_to_1e6_and_cover_the_vectors(tiny_model_dir: Path) -> None:
    texts = calibration_texts(40, seed=3)
    cal = compute_calibration(tiny_model_dir, texts, max_length=64, data={"texts": "test"})
    assert cal.texts == 40 and cal.method == "maxabs"
    model = LoadedModel(tiny_model_dir, provider="cpu")
    ids = [e.ids for e in model.tokenizer.encode(texts)]
    v = np.stack(model.run([Row(ids=i, dim=16, layer=2) for i in ids]))
    r = cal.ranges[budget_key(16, 2)]
    m = float(np.abs(v).max())
    assert r.low == -r.high and 0 <= r.high - m < 1.01e-6
    assert r.high * 1e6 == pytest.approx(round(r.high * 1e6), abs=1e-6)
    assert compute_calibration(tiny_model_dir, texts, max_length=64).ranges == cal.ranges  # deterministic


def test_attaching_heads_drops_the_ranges_of_the_old_read_out(tiny_model_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "src" / "1"
    shutil.copytree(tiny_model_dir, src)
    assert load_manifest(src).calibration is not None
    out = tmp_path / "heads" / "1"
    spec = HeadsSpec(method="test", recipe={}, data={})
    manifest = attach_heads(src, out, random_heads(seed=5), spec)
    assert manifest.calibration is None  # heads change every vector: ranges must be measured again
    assert LoadedModel(out, provider="cpu").manifest.calibration is None
