"""Output types: hand-computed quantisation, calibration ranges in the manifest, the runner's checks, and
that a quantised vector never depends on its batch-mates."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError
from tests.conftest import TINY_DIMS, TINY_LAYERS

from mipic.modeldir.errors import InvalidRequest
from mipic.modeldir.manifest import Calibration, budget_key, load_manifest, write_manifest
from mipic.modeldir.runner import LoadedModel, Row
from mipic.modeldir.vector import calibration_range, quantize


def test_int8_and_uint8_use_the_calibrated_range() -> None:
    x = np.array([[-0.5, 0.0, 0.5, 0.25], [0.7, -0.9, 0.1, -0.1]], np.float32)  # row 2: 0.7/-0.9 saturate
    # level = round((x + 0.5) / 1.0 * 255): -0.5 → 0, 0 → 127.5 → 128 (half to even), 0.5 → 255, 0.25 → 191.25 → 191
    np.testing.assert_array_equal(quantize(x, "uint8", -0.5, 0.5), [[0, 128, 255, 191], [255, 0, 153, 102]])
    np.testing.assert_array_equal(quantize(x, "int8", -0.5, 0.5), [[-128, 0, 127, 63], [127, -128, 25, -26]])
    assert quantize(x, "uint8", -0.5, 0.5).dtype == np.uint8 and quantize(x, "int8", -0.5, 0.5).dtype == np.int8


def test_binary_packs_signs_first_coordinate_in_the_high_bit() -> None:
    x = np.array([[0.5, -0.1, 0.2, 0.0, -0.3, 0.1, 0.1, -0.9, 0.4, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.1]], np.float32)
    # bits 1 0 1 0 0 1 1 0 = 0b10100110 = 166; 1 0 0 0 0 0 0 1 = 129 (zero is not positive)
    np.testing.assert_array_equal(quantize(x, "ubinary"), [[166, 129]])
    np.testing.assert_array_equal(quantize(x, "binary"), [[166 - 128, 129 - 128]])
    assert quantize(x, "binary").dtype == np.int8
    with pytest.raises(ValueError, match="not a multiple of 8"):
        quantize(x[:, :12], "binary")


def test_float_is_unchanged_and_unknown_types_or_missing_ranges_are_refused() -> None:
    x = np.array([[0.6, 0.8]], np.float32)
    np.testing.assert_array_equal(quantize(x, "float"), x)
    with pytest.raises(ValueError, match="unknown output type"):
        quantize(x, "int4")
    with pytest.raises(ValueError, match="needs the calibrated"):
        quantize(x, "int8")


def test_calibration_range_is_symmetric_around_the_largest_value() -> None:
    v = np.array([[0.1, -0.5], [0.3, 0.2], [-0.2, 0.0]], np.float32)
    low, high = calibration_range(v)
    assert (low, high) == pytest.approx((-0.5, 0.5))
    q = quantize(v, "int8", low, high)
    assert q.min() == -128 and q.max() == 76  # 0.3 → round(0.8 * 255) - 128; one scale for every coordinate
    # int8 codes are the float vector times one scale (no per-coordinate distortion, 0 → 0)
    np.testing.assert_allclose(q / 127.5, v / 0.5, atol=1 / 127.5)


def test_manifest_refuses_calibration_that_does_not_cover_every_budget(tiny_model_dir: Path) -> None:
    m = load_manifest(tiny_model_dir)
    assert m.calibration is not None
    assert set(m.calibration.ranges) == {budget_key(d, ly) for d in TINY_DIMS for ly in range(1, TINY_LAYERS + 1)}
    ranges = dict(m.calibration.ranges)
    ranges.pop(budget_key(8, 1))
    with pytest.raises(ValidationError, match="cover every"):
        type(m).model_validate({**m.model_dump(), "calibration": {**m.calibration.model_dump(), "ranges": ranges}})
    bad = {**m.calibration.model_dump()}
    bad["ranges"] = {k: {"low": r.high, "high": r.low} if k == "d8_l1" else r.model_dump()
                     for k, r in m.calibration.ranges.items()}
    with pytest.raises(ValidationError, match="low < high"):
        type(m).model_validate({**m.model_dump(), "calibration": bad})
    assert Calibration.model_validate(m.calibration.model_dump()) == m.calibration


def test_calibration_covers_its_own_texts_through_the_served_read_out(tiny_model_dir: Path) -> None:
    from tests.conftest import calibration_texts

    model = LoadedModel(tiny_model_dir, provider="cpu")
    ids = [e.ids for e in model.tokenizer.encode(calibration_texts())]
    for layer in (1, TINY_LAYERS):
        for dim in TINY_DIMS:
            v = np.stack(model.run([Row(ids=i, dim=dim, layer=layer) for i in ids]))
            r = model.manifest.calibration.ranges[budget_key(dim, layer)]  # type: ignore[union-attr]
            assert r.low == -r.high and (v >= r.low).all() and (v <= r.high).all()
            # the largest |value| is reached (to the stored 1e-6), so no level is wasted
            assert abs(np.abs(v).max() - r.high) < 2e-6


def test_runner_checks_output_types_before_any_compute(tiny_model_dir: Path, tmp_path: Path) -> None:
    model = LoadedModel(tiny_model_dir, provider="cpu")
    model.check_output(8, 1, "binary")
    model.check_output(32, 3, "int8")
    with pytest.raises(InvalidRequest, match=r"^output: unknown output type") as exc:
        model.check_output(8, 1, "int4")
    assert exc.value.field == "output"  # the key: each HTTP surface says its own name for it
    with pytest.raises(InvalidRequest, match=r"^--embedding-type: unknown output type") as exc:
        model.check_output(8, 1, "int4", param="--embedding-type")  # a CLI names its flag
    assert exc.value.field == "--embedding-type"
    # a model with a dim that is not a multiple of 8, and no calibration
    d = tmp_path / "odd" / "1"
    shutil.copytree(tiny_model_dir, d)
    m = load_manifest(d)
    write_manifest(d, m.model_copy(update={"dims": [8, 12, 16, 32], "calibration": None}))
    odd = LoadedModel(d, provider="cpu")
    with pytest.raises(InvalidRequest, match="dim must be a multiple of 8; got 12"):
        odd.check_output(12, 1, "binary")
    odd.check_output(16, 1, "ubinary")
    with pytest.raises(InvalidRequest, match="exported without them"):
        odd.check_output(16, 1, "uint8")


def test_quantised_vectors_do_not_depend_on_batch_mates(tiny_model_dir: Path) -> None:
    model = LoadedModel(tiny_model_dir, provider="cpu")
    texts = ["the quick brown fox", "a dog", "the lazy cat jumps over a dog with a text", "model"]
    ids = [e.ids for e in model.tokenizer.encode(texts)]
    together = np.stack(model.run([Row(ids=i, dim=16, layer=2) for i in ids]))
    for output in ("int8", "uint8", "binary", "ubinary"):
        batch = model.quantize(together, 16, 2, output)
        for k, i in enumerate(ids):
            alone = model.quantize(np.stack(model.run([Row(ids=i, dim=16, layer=2)])), 16, 2, output)
            np.testing.assert_array_equal(alone[0], batch[k])
