"""A model that carries exit heads: served vectors equal PyTorch through the same heads at every (layer, dim),
the golden check catches altered heads, and bad heads files are refused with one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from tests.conftest import TINY_DIMS, TINY_HIDDEN, TINY_LAYERS, random_heads

from mipic.modeldir.heads import HEADS_FILE, ExitHeads, save_heads
from mipic.modeldir.manifest import ManifestError, load_manifest, write_manifest
from mipic.modeldir.runner import LoadedModel, Row

TEXTS = ["the quick brown fox jumps over the lazy dog", "a cat", "embed this text at a short dim",
         "the dog is not a cat and the cat is not a dog and that is that for the model"]


def torch_with_heads(tiny_torch_model, texts: list[str], layer: int, dim: int, heads: ExitHeads) -> np.ndarray:  # type: ignore[no-untyped-def]
    """PyTorch reference written out by hand: mean-pool, W x + b, first dim values, L2-normalise."""
    import torch

    model, tokenizer, _ = tiny_torch_model
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hs = model(**batch, output_hidden_states=True).hidden_states[layer].double()
    m = batch["attention_mask"].unsqueeze(-1).double()
    pooled = (hs * m).sum(1) / m.sum(1)
    w, b = (torch.from_numpy(x).double() for x in heads.layer(layer))
    z = (pooled @ w.T + b)[:, :dim]
    return (z / z.norm(dim=1, keepdim=True)).numpy()


@pytest.fixture(scope="module")
def loaded(tiny_heads_model_dir: Path) -> LoadedModel:
    return LoadedModel(tiny_heads_model_dir, provider="cpu")


@pytest.mark.parametrize("layer", range(1, TINY_LAYERS + 1))
@pytest.mark.parametrize("dim", TINY_DIMS)
def test_served_vectors_equal_torch_through_the_heads(loaded, tiny_torch_model, layer: int, dim: int) -> None:  # type: ignore[no-untyped-def]
    ids = [e.ids for e in loaded.tokenizer.encode(TEXTS)]
    got = np.stack(loaded.run([Row(ids=i, dim=dim, layer=layer) for i in ids]))
    ref = torch_with_heads(tiny_torch_model, TEXTS, layer, dim, random_heads())
    assert np.abs(got - ref).max() <= 1e-5
    plain = np.stack(loaded.run([Row(ids=i, dim=dim, layer=layer) for i in ids]))
    assert plain.shape == (len(TEXTS), dim)


def test_export_recorded_parity_through_the_heads(tiny_heads_model_dir: Path) -> None:
    m = load_manifest(tiny_heads_model_dir)
    assert m.heads is not None and m.heads.path == HEADS_FILE and HEADS_FILE in m.files
    keys = [f"d{d}_l{ly}" for ly in range(1, TINY_LAYERS + 1) for d in TINY_DIMS]
    assert all(0 <= m.parity[k] <= 1e-5 for k in keys)


def test_mixed_budgets_in_one_batch_equal_single_budgets(loaded: LoadedModel) -> None:
    ids = [e.ids for e in loaded.tokenizer.encode(TEXTS)]
    budgets = [(8, 1), (32, 3), (16, 2), (32, 1)]
    mixed = loaded.run([Row(ids=i, dim=d, layer=ly) for i, (d, ly) in zip(ids, budgets, strict=True)])
    for i, (d, ly) in zip(ids, budgets, strict=True):
        alone = loaded.run([Row(ids=i, dim=d, layer=ly)])[0]
        np.testing.assert_allclose(mixed[budgets.index((d, ly))], alone, atol=1e-6)


def test_heads_change_the_vectors(loaded: LoadedModel, tiny_model_dir: Path) -> None:
    plain = LoadedModel(tiny_model_dir, provider="cpu")
    ids = loaded.tokenizer.encode(TEXTS[:1])[0].ids
    a = loaded.run([Row(ids=ids, dim=16, layer=2)])[0]
    b = plain.run([Row(ids=ids, dim=16, layer=2)])[0]
    assert plain.heads is None
    assert float(a @ b) < 0.999


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_golden_check_refuses_altered_heads_even_with_fresh_checksums(tiny_heads_model_dir: Path, tmp_path: Path) -> None:
    d = _copy(tiny_heads_model_dir, tmp_path / "m")
    altered = random_heads(seed=7)
    save_heads(d / HEADS_FILE, altered)
    write_manifest(d, load_manifest(d, verify=False))  # checksums recomputed: only the golden vectors can tell
    model = LoadedModel(d, provider="cpu")
    with pytest.raises(ManifestError, match="fails its golden check"):
        model.verify_golden()


def test_checksum_refuses_altered_heads(tiny_heads_model_dir: Path, tmp_path: Path) -> None:
    d = _copy(tiny_heads_model_dir, tmp_path / "m")
    save_heads(d / HEADS_FILE, random_heads(seed=3))
    with pytest.raises(ManifestError, match=f"checksum mismatch for {HEADS_FILE}"):
        LoadedModel(d, provider="cpu")


@pytest.mark.parametrize("problem", ["shape", "nan", "missing"])
def test_bad_heads_file_is_refused_in_one_line(tiny_heads_model_dir: Path, tmp_path: Path, problem: str) -> None:
    d = _copy(tiny_heads_model_dir, tmp_path / "m")
    path = d / HEADS_FILE
    if problem == "shape":
        np.savez(path, weight=np.zeros((TINY_LAYERS, TINY_HIDDEN, 8), np.float32),
                 bias=np.zeros((TINY_LAYERS, TINY_HIDDEN), np.float32))
    elif problem == "nan":
        w = np.eye(TINY_HIDDEN, dtype=np.float32)[None].repeat(TINY_LAYERS, 0)
        w[1, 2, 3] = np.nan
        np.savez(path, weight=w, bias=np.zeros((TINY_LAYERS, TINY_HIDDEN), np.float32))
    else:
        path.unlink()
    with pytest.raises(ManifestError) as info:
        LoadedModel(d, provider="cpu", verify_checksums=False)
    assert "heads.npz" in str(info.value) and "\n" not in str(info.value)


def test_golden_without_head_vectors_is_refused(tiny_heads_model_dir: Path, tmp_path: Path) -> None:
    d = _copy(tiny_heads_model_dir, tmp_path / "m")
    golden = json.loads((d / "golden.json").read_text())
    del golden["vectors"]
    (d / "golden.json").write_text(json.dumps(golden))
    with pytest.raises(ManifestError, match=r"golden\.json: no head vectors"):
        LoadedModel(d, provider="cpu", verify_checksums=False).verify_golden()


def test_model_without_heads_still_loads_and_verifies(tiny_model_dir: Path) -> None:
    model = LoadedModel(tiny_model_dir, provider="cpu")
    assert model.heads is None and model.manifest.heads is None
    assert model.verify_golden() > 0.9999
