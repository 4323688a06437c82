"""One embedding space for every exit (issue 18): the align term, heads fitted onto the last layer, the
cross-budget measurements in the manifest and the compatibility verdict."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import pytest
from tests.conftest import TINY_DIMS, TINY_HIDDEN, TINY_LAYERS

torch = pytest.importorskip("torch")

from mipic.modeldir.budgets import build_table, exit_space  # noqa: E402
from mipic.modeldir.heads import ExitHeads  # noqa: E402
from mipic.modeldir.manifest import SHARED_SPACE_MIN_COSINE, BudgetRow, load_manifest  # noqa: E402
from mipic.modeldir.runner import LoadedModel  # noqa: E402
from mipic.modeldir.vector import embed  # noqa: E402
from mipic.training.evaluation.grid import run_grid  # noqa: E402
from mipic.training.evaluation.onnx_encoder import OnnxBudgetEncoder  # noqa: E402
from mipic.training.evaluation.result import EXIT_COSINE, EXITS_SUITE  # noqa: E402
from mipic.training.evaluation.retrieval import retrieval_metrics  # noqa: E402
from mipic.training.evaluation.suites import RetrievalSuite  # noqa: E402
from mipic.training.evaluation.variants import HeadsEncoder  # noqa: E402
from mipic.training.export import attach_heads  # noqa: E402
from mipic.training.heads import (  # noqa: E402
    HeadFitConfig,
    extract_features,
    fit_distill,
    fit_lstsq,
    last_layer_targets,
    ridge_map,
)
from mipic.training.losses.distill import SelfDistillLoss, align_loss, align_weights  # noqa: E402
from mipic.training.release import budget_scores, measure_budgets, write_budgets  # noqa: E402

pytestmark = pytest.mark.usefixtures("torch_one_thread")

WORDS = ["the", "a", "cat", "dog", "fox", "quick", "brown", "lazy", "jumps", "over", "embed", "layer", "dim", "model",
         "text", "short", "long", "is", "of", "in", "with", "from"]


def mean_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float(np.mean(np.sum(a * b, axis=1)))


def random_rotation(n: int, seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((n, n)))
    return (q * np.sign(np.diag(r))).astype(np.float32)


# --------------------------------------------------------------------------- the align term


def test_align_term_is_zero_when_the_student_is_the_teacher_at_full_depth() -> None:
    teacher = torch.randn(16, 12)
    shallow = torch.randn(16, 12)
    readouts = [shallow, teacher.clone()]
    budgets = [(d, 2) for d in (4, 8, 12)]
    assert float(align_loss(readouts, teacher, budgets)) == pytest.approx(0.0, abs=1e-6)
    # scale does not matter (the served vector is re-normalised), direction does
    assert float(align_loss([shallow, 3.0 * teacher], teacher, budgets)) == pytest.approx(0.0, abs=1e-6)
    assert float(align_loss(readouts, teacher, [(4, 1)])) > 0.3
    # the whole distillation loss, KL + anchor + align, is zero at the full budget when student = teacher
    loss = SelfDistillLoss([(12, 2)], temperature=0.05, anchor_weight=1.0, align_weight=10.0)
    assert float(loss(readouts, teacher)) == pytest.approx(0.0, abs=1e-5)
    assert float(loss.last_align) == pytest.approx(0.0, abs=1e-6)


def test_align_term_sees_a_rotation_that_the_kl_cannot() -> None:
    teacher = torch.randn(32, 8)
    rotated = teacher @ torch.from_numpy(random_rotation(8, 0)).T  # same similarities, other coordinates
    kl_only = SelfDistillLoss([(8, 1)], temperature=0.05)
    with_align = SelfDistillLoss([(8, 1)], temperature=0.05, align_weight=1.0)
    assert float(kl_only([rotated], teacher)) == pytest.approx(0.0, abs=1e-4)
    assert float(with_align([rotated], teacher)) > 0.5


def test_linear_dim_weighting_weighs_wide_prefixes_by_their_width() -> None:
    budgets = [(4, 1), (12, 1)]
    w = align_weights(budgets, "linear")
    assert w.tolist() == pytest.approx([0.5, 1.5])  # ∝ d, mean 1
    assert align_weights(budgets, "uniform").tolist() == [1.0, 1.0]
    teacher = torch.randn(16, 12)
    student = teacher.clone()
    student[:, 4:] = torch.randn(16, 8)  # the first 4 dims right, the tail wrong
    per = [float(align_loss([student], teacher, [b])) for b in budgets]
    assert per[0] == pytest.approx(0.0, abs=1e-6) and per[1] > 0.1
    assert float(align_loss([student], teacher, budgets, w)) == pytest.approx((0.5 * per[0] + 1.5 * per[1]) / 2)
    linear = SelfDistillLoss(budgets, align_weight=1.0, align_dim_weighting="linear")
    uniform = SelfDistillLoss(budgets, align_weight=1.0)
    linear([student], teacher)
    uniform([student], teacher)
    assert float(linear.last_align) > float(uniform.last_align)
    with pytest.raises(ValueError, match="align_dim_weighting"):
        SelfDistillLoss(budgets, align_dim_weighting="square")  # type: ignore[arg-type]


def test_align_gradient_reaches_the_student_not_the_target() -> None:
    student = torch.randn(8, 6, requires_grad=True)
    target = torch.randn(8, 6, requires_grad=True)
    align_loss([student], target, [(6, 1), (3, 1)]).backward()
    assert student.grad is not None and float(student.grad.abs().sum()) > 0
    assert target.grad is None


def test_align_weight_is_validated() -> None:
    with pytest.raises(ValueError, match="align_weight"):
        SelfDistillLoss([(8, 1)], align_weight=-1.0)
    with pytest.raises(ValueError, match="align_weight and ridge"):
        HeadFitConfig(align_weight=-0.1)


# --------------------------------------------------------------------------- heads fitted onto the last layer


def linked_features(n: int = 512, hidden: int = 16, layers: int = 3, seed: int = 0) -> np.ndarray:
    """Each shallow layer is an affine map of the last plus a little noise: a shared space exists."""
    rng = np.random.default_rng(seed)
    last = 2.0 + rng.standard_normal((n, hidden))
    out = []
    for _ in range(layers - 1):
        a = rng.standard_normal((hidden, hidden)) / np.sqrt(hidden)
        out.append(last @ a.T + 0.5 + 0.01 * rng.standard_normal((n, hidden)))
    out.append(last)
    return np.stack(out).astype(np.float32)


def test_lstsq_heads_map_every_exit_onto_the_last_layer() -> None:
    feats = linked_features()
    heads = fit_lstsq(feats, ridge=1e-6)
    w_last = heads.weight[-1]
    np.testing.assert_allclose(w_last @ w_last.T, np.eye(w_last.shape[0]), atol=1e-5)  # last head: a rotation
    for layer in (1, 2):
        for dim in (4, 16):
            here = embed(feats[layer - 1], dim, heads.layer(layer))
            last = embed(feats[-1], dim, heads.layer(3))
            assert mean_cosine(here, last) > 0.99, (layer, dim)
    # without the fit the exits are unrelated
    rotated = ExitHeads(np.stack([random_rotation(16, s) for s in range(3)]), np.zeros((3, 16), np.float32))
    assert mean_cosine(embed(feats[0], 16, rotated.layer(1)), embed(feats[-1], 16, rotated.layer(3))) < 0.5


def test_lstsq_prefix_rows_are_the_fit_of_the_prefix_alone() -> None:
    feats = linked_features(seed=1)
    y = last_layer_targets(feats, fit_lstsq(feats).weight[-1])
    w_all, b_all = ridge_map(feats[0], y, 1e-3)
    w_4, b_4 = ridge_map(feats[0], y[:, :4], 1e-3)
    np.testing.assert_allclose(w_all[:4], w_4, atol=1e-4)
    np.testing.assert_allclose(b_all[:4], b_4, atol=1e-4)


def test_distilled_heads_stay_in_the_last_layers_space_only_with_the_align_term() -> None:
    feats = linked_features(n=256, seed=2)
    cfg = {"steps": 60, "batch_size": 64, "sentences": 256, "lr": 1e-2}
    aligned, _ = fit_distill(feats, HeadFitConfig(**cfg, align_weight=30.0), dims=[4, 16], progress=False)
    free, _ = fit_distill(feats, HeadFitConfig(**cfg, align_weight=0.0), dims=[4, 16], progress=False)

    def cos(heads: ExitHeads) -> float:
        return mean_cosine(embed(feats[0], 16, heads.layer(1)), embed(feats[-1], 16, heads.layer(3)))

    assert cos(aligned) > 0.95
    assert cos(free) < cos(aligned) - 0.3


# --------------------------------------------------------------------------- measured into the manifest


def tiny_retrieval(seed: int = 0, n: int = 24) -> RetrievalSuite:
    rng = random.Random(seed)
    queries, corpus, qrels = {}, {}, {}
    for i in range(n):
        words = rng.sample(WORDS, 3)
        queries[f"q{i}"] = " ".join(words)
        corpus[f"d{i}"] = " ".join(words + rng.sample(WORDS, 5))
        qrels[f"q{i}"] = {f"d{i}": 1.0}
    return RetrievalSuite("tiny_retrieval", queries, corpus, qrels)


def fitting_texts(n: int = 400, seed: int = 1) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 10))) for _ in range(n)]


@pytest.fixture(scope="module")
def aligned_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mipic.modeldir.manifest import HeadsSpec

    model = LoadedModel(tiny_model_dir, provider="cpu")
    feats = extract_features(model, fitting_texts(), progress=False)
    model.close()
    out = tmp_path_factory.mktemp("aligned") / "tiny" / "1"
    attach_heads(tiny_model_dir, out, fit_lstsq(feats), HeadsSpec(method="lstsq"))
    write_budgets(out, measure_budgets(out, eval_suites=[tiny_retrieval()], max_items=24))
    return out


@pytest.fixture(scope="module")
def rotated_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Heads that are random rotations, one per layer: each exit in its own coordinates."""
    from mipic.modeldir.manifest import HeadsSpec

    heads = ExitHeads(np.stack([random_rotation(TINY_HIDDEN, s) for s in range(TINY_LAYERS)]),
                      np.zeros((TINY_LAYERS, TINY_HIDDEN), np.float32))
    out = tmp_path_factory.mktemp("rotated") / "tiny" / "1"
    attach_heads(tiny_model_dir, out, heads, HeadsSpec(method="test"))
    write_budgets(out, measure_budgets(out, eval_suites=[tiny_retrieval()], max_items=24))
    return out


def test_random_rotation_heads_fail_the_compatibility_check(rotated_dir: Path, aligned_dir: Path) -> None:
    rotated = load_manifest(rotated_dir).budgets
    aligned = load_manifest(aligned_dir).budgets
    assert rotated is not None and rotated.exit_space is not None
    assert not rotated.exit_space.shared and rotated.exit_space.worst_cosine < 0.3
    assert rotated.exit_space.worst_budget.layer < TINY_LAYERS
    assert aligned is not None and aligned.exit_space is not None
    assert aligned.exit_space.shared and aligned.exit_space.worst_cosine >= SHARED_SPACE_MIN_COSINE
    assert aligned.exit_space.min_cosine_required == SHARED_SPACE_MIN_COSINE
    assert aligned.index_suites == {"tiny_retrieval": "ndcg@10"}
    # the last layer against itself: cosine 1 and index quality = same-budget quality
    for row in aligned.rows:
        if row.layer == TINY_LAYERS:
            assert row.cosine_to_last == pytest.approx(1.0, abs=1e-4)
            assert row.index_quality == pytest.approx(row.quality, abs=1e-4)


def test_cross_budget_numbers_in_the_manifest_equal_a_recomputation(aligned_dir: Path) -> None:
    """Recomputed through the server's own runner: queries at (d, l), documents at (d, L)."""
    table = load_manifest(aligned_dir).budgets
    assert table is not None
    suite = tiny_retrieval()
    model = LoadedModel(aligned_dir, provider="cpu")
    try:
        q_ids, d_ids = list(suite.queries), list(suite.corpus)
        rels = [{d_ids.index(d): g for d, g in suite.qrels[q].items()} for q in q_ids]

        def served(texts: list[str], layer: int, dim: int) -> np.ndarray:
            ids = [e.ids for e in model.tokenizer.encode(texts)]
            pooled = model.pool_all_layers(ids)[layer - 1]
            return np.asarray(model.embed_pooled(pooled, layer, dim))

        checked = 0
        for row in table.rows:
            q = served([suite.queries[i] for i in q_ids], row.layer, row.dim)
            docs = served([suite.corpus[i] for i in d_ids], TINY_LAYERS, row.dim)
            ndcg = retrieval_metrics(q, docs, rels)["ndcg@10"]
            assert row.index_scores["tiny_retrieval"] == pytest.approx(ndcg, abs=1e-4)
            texts = [*suite.queries.values(), *suite.corpus.values()]
            cos = mean_cosine(served(texts, row.layer, row.dim), served(texts, TINY_LAYERS, row.dim))
            assert row.cosine_to_last == pytest.approx(cos, abs=1e-4)
            checked += 1
        assert checked == TINY_LAYERS * len(TINY_DIMS)
    finally:
        model.close()


def test_grid_reports_cross_exit_metrics(aligned_dir: Path) -> None:
    enc = OnnxBudgetEncoder(aligned_dir)
    grid = run_grid(HeadsEncoder(enc, enc.heads), [tiny_retrieval()], geometry=False)
    cos = grid.table(EXITS_SUITE, EXIT_COSINE)
    np.testing.assert_allclose(cos[-1], 1.0, atol=1e-4)
    assert "index_ndcg@10" in grid.scores["tiny_retrieval"]
    scores, index_scores, index_suites, cosines = budget_scores(grid)
    assert index_suites == {"tiny_retrieval": "ndcg@10"} and len(cosines) == len(scores) == len(index_scores)
    with pytest.raises(ValueError, match="exits"):
        run_grid(HeadsEncoder(enc, enc.heads), [RetrievalSuite("exits", {}, {}, {})])


def test_exit_space_verdict_from_rows() -> None:
    def row(layer: int, cos: float | None) -> BudgetRow:
        return BudgetRow(dim=8, layer=layer, relative_cost=0.5, quality=0.5, cosine_to_last=cos)

    assert exit_space([row(1, None)]) is None  # measured before issue 18: unknown, not "false"
    space = exit_space([row(1, 0.62), row(2, 0.49), row(3, 1.0)])
    assert space is not None and not space.shared and space.worst_budget.layer == 2
    assert exit_space([row(1, 0.62), row(3, 1.0)]).shared  # type: ignore[union-attr]
    table = build_table({(8, 1): {"s": 0.5}}, {"s": "ndcg@10"}, [1.0, 1.0], 0.0, 8,
                        index_scores={(8, 1): {"s": 0.4}}, index_suites={"s": "ndcg@10"},
                        cosine_to_last={(8, 1): 0.7})
    assert table.rows[0].index_quality == 0.4 and table.exit_space is not None and table.exit_space.shared


def test_older_manifest_without_cross_measurements_still_loads(tiny_heads_model_dir: Path, tmp_path: Path) -> None:
    d = tmp_path / "1"
    shutil.copytree(tiny_heads_model_dir, d)
    table = measure_budgets(d, scores={(8, 1): {"s": 0.5}}, suites={"s": "ap"}, max_items=7)
    assert table.exit_space is None and table.rows[0].cosine_to_last is None
    write_budgets(d, table)
    assert load_manifest(d).budgets.exit_space is None  # type: ignore[union-attr]
