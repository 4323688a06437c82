"""The default model's output types: the committed calibration is attached at bootstrap, and each compact
type keeps the geometry of the float vectors on real sentences."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mipic.modeldir.manifest import budget_key
from mipic.modeldir.runner import LoadedModel, Row

pytestmark = pytest.mark.integration

SENTENCES = ["A man is playing a guitar.", "Someone plays an instrument.", "The stock market fell sharply today.",
             "Shares dropped at the opening bell.", "A cat sleeps on the sofa.", "The kitten naps on a couch.",
             "Heavy rain is expected tomorrow.", "Forecasters predict storms for the weekend."]


def test_bootstrap_attaches_the_committed_calibration(minilm_dir: Path) -> None:
    model = LoadedModel(minilm_dir, provider="cpu")
    cal = model.manifest.calibration
    assert cal is not None and cal.texts == 8000 and cal.max_length == 128 and cal.data["split"] == "train"
    assert len(cal.ranges) == 6 * 6
    r = cal.ranges[budget_key(64, 3)]
    assert cal.method == "maxabs" and r.low == -r.high and 0.1 < r.high < 1


@pytest.mark.parametrize(("dim", "layer", "bits"), [(384, 6, True), (64, 3, False)])
def test_compact_types_keep_the_similarity_structure(minilm_dir: Path, dim: int, layer: int, bits: bool) -> None:
    model = LoadedModel(minilm_dir, provider="cpu")
    ids = [e.ids for e in model.tokenizer.encode(SENTENCES)]
    x = np.stack(model.run([Row(ids=i, dim=dim, layer=layer) for i in ids]))  # (8, dim) unit vectors
    sim = x @ x.T
    # int8: cosine of the codes tracks the float cosine. With a range of at most twice these vectors' largest
    # coordinate, a step is ≤ 2·max|x|/127 and rounding leaves an error vector of norm about step·√(dim/12),
    # which moves a cosine by about twice that; a range far too wide (coarse codes) or too narrow (saturated
    # codes) does not fit. Measured on the default model: 0.0103 at (64, 3) against a bound of 0.030.
    step = 2 * float(np.abs(x).max()) / 127
    q = model.quantize(x, dim, layer, "int8").astype(np.float64)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    assert np.abs(q @ q.T - sim).max() < 2 * step * np.sqrt(dim / 12)
    nearest_float = np.argmax(sim - 2 * np.eye(len(ids)), axis=1)
    assert (nearest_float == np.arange(len(ids)) ^ 1).all()  # each sentence's paraphrase is its pair
    assert (np.argmax(q @ q.T - 2 * np.eye(len(ids)), axis=1) == nearest_float).all()  # and so it stays in int8
    if not bits:  # 64 sign bits of a layer-3 vector lose too much for this (bench/results/output_types.md)
        return
    # binary at the full budget: the paraphrase is the nearest neighbour by Hamming distance too
    bits = np.unpackbits(model.quantize(x, dim, layer, "ubinary"), axis=1).astype(np.int64)
    hamming = (bits[:, None, :] != bits[None, :, :]).sum(-1) + np.eye(len(ids), dtype=np.int64) * 10**6
    assert (np.argmin(hamming, axis=1) == nearest_float).all()
