"""Fitting exit heads: PCA rotations, KL self-distillation with a frozen teacher, a constrained last layer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from mipic.modeldir.runner import LoadedModel  # noqa: E402
from mipic.modeldir.vector import embed  # noqa: E402
from mipic.training.heads import (  # noqa: E402
    HeadFitConfig,
    extract_features,
    fit_distill,
    fit_heads,
    fit_pca,
    pca_rotation,
)
from mipic.training.losses.distill import distill_kl, similarity_logits  # noqa: E402

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def synthetic_features(layers: int = 3, n: int = 256, hidden: int = 16, seed: int = 0) -> np.ndarray:
    """Deeper layers carry more of a shared low-rank signal; all layers share a large common mean."""
    rng = np.random.default_rng(seed)
    signal = rng.standard_normal((n, 4)) @ rng.standard_normal((4, hidden))
    out = []
    for ly in range(1, layers + 1):
        noise = rng.standard_normal((n, hidden))
        out.append(3.0 + ly / layers * signal + (1 - ly / layers + 0.3) * noise)
    return np.stack(out).astype(np.float32)


def test_pca_rotation_is_orthogonal_and_ordered_by_variance() -> None:
    x = synthetic_features()[2]
    w = pca_rotation(x)
    np.testing.assert_allclose(w @ w.T, np.eye(w.shape[0]), atol=1e-5)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    var = ((xn - xn.mean(0)) @ w.T).var(axis=0)
    assert np.all(np.diff(var) <= 1e-6)


def test_pca_heads_keep_full_width_similarities() -> None:
    feats = synthetic_features()
    heads = fit_pca(feats)
    for ly in range(1, 4):
        a = embed(feats[ly - 1], 16)
        b = embed(feats[ly - 1], 16, heads.layer(ly))
        np.testing.assert_allclose(a @ a.T, b @ b.T, atol=1e-5)


def test_distillation_term_is_zero_when_student_is_the_teacher() -> None:
    t = torch.randn(8, 5)
    t_log = torch.log_softmax(similarity_logits(t, 0.05), dim=-1)
    assert float(distill_kl(t, t_log, 0.05)) == pytest.approx(0.0, abs=1e-6)
    assert float(distill_kl(torch.randn(8, 5), t_log, 0.05)) > 0.1


def test_distillation_lowers_the_loss_keeps_the_last_layer_a_rotation_and_is_reproducible() -> None:
    feats = synthetic_features()
    cfg = HeadFitConfig(steps=40, batch_size=64, lr=5e-3, sentences=256, last_layer="orthogonal")
    heads, curve = fit_distill(feats, cfg, dims=[4, 8, 16], progress=False)
    assert np.mean(curve[-5:]) < 0.8 * np.mean(curve[:5])
    w_last, b_last = heads.layer(3)
    np.testing.assert_allclose(w_last @ w_last.T, np.eye(16), atol=1e-4)  # orthogonal: full budget unchanged
    np.testing.assert_array_equal(b_last, 0.0)
    again, _ = fit_distill(feats, cfg, dims=[4, 8, 16], progress=False)
    np.testing.assert_array_equal(again.weight, heads.weight)
    np.testing.assert_array_equal(again.bias, heads.bias)


def test_teacher_features_are_not_changed_by_fitting() -> None:
    feats = synthetic_features()
    before = feats.copy()
    fit_distill(feats, HeadFitConfig(steps=3, batch_size=32, sentences=256), dims=[8, 16], progress=False)
    np.testing.assert_array_equal(feats, before)


def test_distilled_heads_beat_plain_truncation_on_the_small_prefix() -> None:
    """At a shallow layer and a small dim, the head's similarities track the teacher's much better."""
    feats = synthetic_features(n=512)
    heads, _ = fit_distill(feats, HeadFitConfig(steps=60, batch_size=128, lr=5e-3, sentences=512),
                           dims=[2, 4, 16], progress=False)
    teacher = embed(feats[-1], 16)
    t_sim = teacher @ teacher.T

    def agreement(vectors: np.ndarray) -> float:
        s = vectors @ vectors.T
        iu = np.triu_indices(len(s), 1)
        return float(np.corrcoef(s[iu], t_sim[iu])[0, 1])

    assert agreement(embed(feats[0], 4, heads.layer(1))) > agreement(embed(feats[0], 4)) + 0.1


def test_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="method must be"):
        HeadFitConfig(method="svd")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="last_layer must be"):
        HeadFitConfig(last_layer="free")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="temperature and lr"):
        HeadFitConfig(temperature=0)


def test_fit_heads_on_a_model_directory(tiny_model_dir: Path, tmp_path: Path) -> None:
    model = LoadedModel(tiny_model_dir, provider="cpu")
    texts = [f"the {a} {b} is a {c}" for a in ("cat", "dog", "fox") for b in ("quick", "lazy", "brown")
             for c in ("model", "text", "layer", "dim")]
    feats = extract_features(model, texts, cache_dir=tmp_path, progress=False)
    assert feats.shape == (3, len(texts), 32)
    assert list(tmp_path.glob("features-*.npy")), "features are cached"
    np.testing.assert_array_equal(extract_features(model, texts, cache_dir=tmp_path, progress=False), feats)
    result = fit_heads(model, HeadFitConfig(steps=5, batch_size=16, sentences=16), texts=texts, progress=False)
    assert result.heads.weight.shape == (3, 32, 32)
    assert result.spec.method == "distill" and result.spec.recipe["steps"] == 5
    assert {(b.dim, b.layer) for b in result.spec.fitted_budgets} == {(d, ly) for d in (8, 16, 32) for ly in (1, 2, 3)}


def test_default_last_layer_is_the_untrained_pca_rotation() -> None:
    feats = synthetic_features()
    heads, _ = fit_distill(feats, HeadFitConfig(steps=5, batch_size=32, sentences=256), dims=[4, 16], progress=False)
    np.testing.assert_allclose(heads.weight[-1], fit_pca(feats).weight[-1], atol=1e-6)
    np.testing.assert_array_equal(heads.bias[-1], 0.0)
