"""Geometry diagnostics: hand-known cases, the four poolings on a tiny model, the report and `mipic geometry`."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("matplotlib")

from mipic.training.evaluation.spectrum import (  # noqa: E402
    DIAGNOSTIC_POOLINGS,
    default_name,
    effective_rank_by_dim,
    geometry_markdown,
    model_geometry,
    pooling_geometry,
    singular_spectrum,
)
from mipic.training.evaluation.suites import GeometrySuite  # noqa: E402

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def test_uniformity_of_two_antipodal_points() -> None:
    g = pooling_geometry(np.array([[3.0, 0.0], [-0.5, 0.0]]), dims=[1, 2])
    assert g.uniformity == pytest.approx(-8.0)  # log exp(−2 · ‖2e₁‖²), after L2 normalisation
    assert g.effective_rank == pytest.approx(1.0)
    assert g.alignment is None


def test_uniformity_definition_on_a_square_and_collapse() -> None:
    square = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    # distinct pairs only: 4 at ‖x−y‖² = 2, 2 at 4
    expected = math.log((4 * math.exp(-4) + 2 * math.exp(-8)) / 6)
    assert pooling_geometry(square, [2]).uniformity == pytest.approx(expected)
    assert pooling_geometry(np.ones((6, 4)), [4]).uniformity == pytest.approx(0.0)  # collapsed: the maximum


def test_alignment_of_positive_pairs() -> None:
    x = np.eye(3)
    g = pooling_geometry(x, [3], pos_a=np.eye(2, 3) * 5, pos_b=-np.eye(2, 3))
    assert g.alignment == pytest.approx(4.0)  # antipodal positives: ‖x − y‖² = 4


def test_isotropic_sample_has_full_effective_rank() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1000, 16))
    g = pooling_geometry(x, [4, 8, 16])
    assert g.effective_rank > 15.5
    assert effective_rank_by_dim(x, [4, 8])[4] > 3.9
    assert g.effective_rank_by_dim[8] > 7.8
    spectrum = np.asarray(g.spectrum)
    assert spectrum.sum() == pytest.approx(1.0)
    assert spectrum.max() / spectrum.min() < 1.5  # flat (Marchenko-Pastur edges: (1 ± √(16/1000))²)


def test_anisotropic_sample_has_a_dominant_direction() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((500, 16)) * 0.1 + 3.0 * np.eye(16)[0]  # a common offset
    s = singular_spectrum(x)
    assert s[0] > 0.5 and list(s) == sorted(s, reverse=True)
    assert pooling_geometry(x, [16]).uniformity > -0.1


def test_default_names() -> None:
    assert default_name("packaged") == "base"
    assert default_name("runs/jepa/final") == "jepa"
    assert default_name("runs/mlm/final_mlm") == "mlm"
    assert default_name("some/dir") == "dir"


TEXTS = [
    "the quick brown fox",
    "a lazy dog",
    "the cat is on the text",
    "short text",
    "long model layer dim",
    "embed it",
]


def test_model_geometry_under_four_poolings(tiny_torch_model: Any) -> None:
    model, tokenizer, _ = tiny_torch_model
    pairs = [("the quick brown fox", "a lazy dog"), ("short text", "short text")]
    report = model_geometry(model, tokenizer, TEXTS, pairs, name="tiny", dims=[8, 32])
    assert list(report.poolings) == list(DIAGNOSTIC_POOLINGS)
    assert report.layer == 3 and report.n_pairs == 2
    cls, mean = report.poolings["cls"], report.poolings["mean"]
    assert cls.uniformity != mean.uniformity  # different poolings, different geometry
    for g in report.poolings.values():
        assert -8.0 <= g.uniformity <= 0.0
        assert g.alignment is not None and 0.0 <= g.alignment <= 4.0
        assert set(g.effective_rank_by_dim) == {8, 32}
        assert 1.0 <= g.effective_rank <= len(TEXTS) + 1e-6
    with pytest.raises(ValueError, match=r"layer must be in 1\.\.3, got 4"):
        model_geometry(model, tokenizer, TEXTS, layer=4)

    assert report.to_dict()["poolings"]["mean"]["uniformity"] == mean.uniformity
    md = geometry_markdown([report])
    assert "| mean | tiny |" in md and "d=32" in md and "−0.16" in md


def test_geometry_cli(tiny_torch_model: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from mipic.cli import app
    from mipic.training.evaluation import suites

    _, _, ckpt = tiny_torch_model
    sample = GeometrySuite("geometry", TEXTS, [("a lazy dog", "short text")])
    # The packaged corpora are not needed here: stand in a sample for the built-in suites.
    monkeypatch.setattr(suites, "geometry_suite", lambda *a, **k: sample)
    monkeypatch.setattr(suites, "builtin_suites", lambda *a, **k: [])
    out = tmp_path / "geo"
    result = CliRunner().invoke(app, ["geometry", str(ckpt), str(ckpt), "--names", "a,b", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "spectrum.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| max | b |" in (out / "geometry.md").read_text(encoding="utf-8")
    data = json.loads((out / "geometry.json").read_text(encoding="utf-8"))
    assert [m["name"] for m in data["models"]] == ["a", "b"]
    a, b = (m["poolings"]["mean"]["uniformity"] for m in data["models"])
    assert a == b  # same checkpoint, same numbers
    bad = CliRunner().invoke(app, ["geometry", str(ckpt), "--names", "a,b", "--out", str(out)])
    assert bad.exit_code == 2 and "2 names for 1 models" in bad.output
