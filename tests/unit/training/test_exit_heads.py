"""The one trainable exit-head module (training and head fitting share it), and the one text digest."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from tests.conftest import TINY_HIDDEN, TINY_LAYERS, random_heads  # noqa: E402

from mipic.training.exit_heads import ExitHeadsModule  # noqa: E402

SRC = Path(__file__).resolve().parents[3] / "src" / "mipic"


def test_readout_is_the_affine_map_and_export_round_trips() -> None:
    init = random_heads()
    heads = ExitHeadsModule(init)
    x = torch.randn(5, TINY_HIDDEN)
    for layer in range(1, TINY_LAYERS + 1):
        expected = x @ torch.from_numpy(init.weight[layer - 1]).T + torch.from_numpy(init.bias[layer - 1])
        torch.testing.assert_close(heads(layer, x), expected)
    out = heads.export()
    np.testing.assert_array_equal(out.weight, init.weight)
    np.testing.assert_array_equal(out.bias, init.bias)


@pytest.mark.parametrize(("last", "trained"), [("fixed", set()), ("orthogonal", {"last.parametrizations.weight.original"}),
                                               ("affine", {"last.weight", "last.bias"})])
def test_the_last_head_trains_as_asked(last: str, trained: set[str]) -> None:
    q, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((TINY_HIDDEN, TINY_HIDDEN)))
    init = random_heads()
    init.weight[-1] = q.astype(np.float32)  # a rotation, as a PCA head is
    init.bias[-1] = 0.0
    heads = ExitHeadsModule(init, last)
    names = {n for n, p in heads.named_parameters() if p.requires_grad and n.startswith("last.")}
    assert names == trained
    shallow = {n for n, p in heads.named_parameters() if p.requires_grad and n.startswith("affine.")}
    assert len(shallow) == 2 * (TINY_LAYERS - 1)
    opt = torch.optim.SGD([p for p in heads.parameters() if p.requires_grad], lr=0.05)
    torch.manual_seed(0)
    x, target = torch.randn(8, TINY_HIDDEN), torch.randn(8, TINY_HIDDEN)
    sum((heads(layer, x) - target).pow(2).mean() for layer in range(1, TINY_LAYERS + 1)).backward()
    opt.step()
    w = heads.export().weight[-1]
    if last == "fixed":
        np.testing.assert_array_equal(w, init.weight[-1])
    elif last == "orthogonal":
        assert not np.allclose(w, init.weight[-1])
        np.testing.assert_allclose(w @ w.T, np.eye(TINY_HIDDEN), atol=1e-5)


def test_a_bad_last_head_is_named() -> None:
    with pytest.raises(ValueError, match="last must be 'fixed', 'orthogonal' or 'affine', got 'pca'"):
        ExitHeadsModule(random_heads(), "pca")


def test_one_exit_head_module_and_one_text_digest() -> None:
    """Two copies each before issue 21: ``heads._Heads`` beside ``model.ExitHeadsModule``, and
    ``evaluation.encoders._texts_key`` beside ``heads.texts_digest``."""
    found: list[str] = []
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and node.name.lstrip("_") in {"Heads", "ExitHeadsModule"}:
                found.append(f"{path.relative_to(SRC)}:{node.name}")
            if isinstance(node, ast.FunctionDef) and node.name.lstrip("_") in {"texts_digest", "texts_key"}:
                found.append(f"{path.relative_to(SRC)}:{node.name}")
    assert sorted(found) == ["training/data/text.py:texts_digest", "training/exit_heads.py:ExitHeadsModule"]
