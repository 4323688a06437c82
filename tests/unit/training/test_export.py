"""Staged export: parity with PyTorch at every layer and (layer, dim); refusal on mismatch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from tests.conftest import TINY_DIMS, TINY_LAYERS

from mipic.modeldir.manifest import ManifestError, load_manifest


def test_manifest_lists_every_stage_with_checksums(tiny_model_dir: Path) -> None:
    m = load_manifest(tiny_model_dir)
    assert m.num_layers == TINY_LAYERS
    expected = ["embeddings.onnx", "layer_01.onnx", "layer_02.onnx", "layer_03.onnx"]
    assert [s.path for s in m.stages] == expected
    assert m.dims == TINY_DIMS
    assert set(m.files) >= {"embeddings.onnx", "layer_01.onnx", "tokenizer.json"}
    # the exporter measured parity at every layer and every (layer, dim)
    assert {f"layer_{i}" for i in range(TINY_LAYERS + 1)} <= set(m.parity)
    assert {f"d{d}_l{ly}" for d in TINY_DIMS for ly in range(1, TINY_LAYERS + 1)} <= set(m.parity)
    assert max(m.parity.values()) < 1e-4


def test_weights_are_stored_once(tiny_model_dir: Path, tiny_torch_model) -> None:  # type: ignore[no-untyped-def]
    model, _, _ = tiny_torch_model
    n_params = sum(p.numel() for p in model.parameters())
    onnx_bytes = sum(p.stat().st_size for p in tiny_model_dir.glob("*.onnx"))
    # fp32 weights once (+ graph overhead), not once per stage prefix
    assert n_params * 4 <= onnx_bytes < n_params * 4 * 1.5 + 200_000


def test_stage_outputs_match_torch_hidden_states(tiny_model_dir: Path, tiny_torch_model) -> None:  # type: ignore[no-untyped-def]
    import onnxruntime as ort
    import torch

    model, tokenizer, _ = tiny_torch_model
    batch = tokenizer(["the quick brown fox", "a dog", "the cat is on the lazy dog and the fox"],
                      padding=True, return_tensors="pt")
    with torch.no_grad():
        ref = model(**batch, output_hidden_states=True).hidden_states
    mask = batch["attention_mask"].numpy()
    sessions = [ort.InferenceSession(str(p)) for p in sorted(tiny_model_dir.glob("*.onnx"))]
    (state,) = sessions[0].run(None, {"input_ids": batch["input_ids"].numpy()})
    np.testing.assert_allclose(state, ref[0].numpy(), atol=1e-5)
    for k in range(1, TINY_LAYERS + 1):
        (state,) = sessions[k].run(None, {"hidden_states": state, "attention_mask": mask})
        valid = mask.astype(bool)
        np.testing.assert_allclose(state[valid], ref[k].numpy()[valid], atol=1e-4)


def test_export_refuses_a_model_that_fails_parity(tiny_torch_model, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from mipic.training import export as export_mod

    model, tokenizer, _ = tiny_torch_model
    real_check = export_mod.check_parity

    def corrupt_then_check(*args, **kwargs):  # type: ignore[no-untyped-def]
        # damage one exported layer after export: parity must catch it
        import onnx
        from onnx import numpy_helper

        model_dir = args[2]
        proto = onnx.load(str(model_dir / "layer_02.onnx"))
        init = proto.graph.initializer[0]
        arr = numpy_helper.to_array(init).copy() + 0.5
        init.CopyFrom(numpy_helper.from_array(arr, init.name))
        onnx.save(proto, str(model_dir / "layer_02.onnx"))
        return real_check(*args, **kwargs)

    monkeypatch.setattr(export_mod, "check_parity", corrupt_then_check)
    out = tmp_path / "bad"
    with pytest.raises(export_mod.ParityError, match="layer_02"):
        export_mod.export_staged(model, tokenizer, out, export_mod.ExportOptions(name="bad"))
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # no half-written temp dir left behind


def test_load_manifest_rejects_tampered_files(tiny_model_dir: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, copy)
    load_manifest(copy)  # intact copy is fine
    with (copy / "layer_01.onnx").open("ab") as f:
        f.write(b"\0")
    with pytest.raises(ManifestError, match=r"checksum mismatch for layer_01\.onnx"):
        load_manifest(copy)
    data = json.loads((copy / "manifest.json").read_text())
    data["dims"] = [64, 8]
    (copy / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="ascending"):
        load_manifest(copy, verify=False)


def test_cli_export_reads_trained_budgets_from_train_config(tiny_torch_model, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import shutil

    import yaml
    from typer.testing import CliRunner

    from mipic.cli import app

    _, _, ckpt = tiny_torch_model
    run = tmp_path / "final"
    shutil.copytree(ckpt, run)
    (run / "train_config.yaml").write_text(yaml.safe_dump(
        {"objective": "mipic", "loss": {"dims": [8, 16, 32], "chain": [[8, 1], [16, 2], [32, 3]]}}))
    out = tmp_path / "exported"
    result = CliRunner().invoke(app, ["export", str(run), str(out), "--name", "tiny", "--max-seq-length", "32",
                                      "--heads", "none", "--budget-items", "0"])
    assert result.exit_code == 0, result.output
    assert "exporting layers" in result.stderr  # the progress bar
    m = load_manifest(out)
    assert (8, 1) in {(b.dim, b.layer) for b in m.trained_budgets} and m.max_seq_length == 32
    assert m.source["objective"] == "mipic"


def test_cli_heads_fit_writes_a_model_with_heads_and_budgets(tiny_model_dir: Path, tmp_path: Path) -> None:
    """`mipic heads fit` on real training-split sentences (a few, few steps), then the budget table."""
    from typer.testing import CliRunner

    from mipic.cli import app
    from mipic.modeldir.runner import LoadedModel

    out = tmp_path / "with_heads"
    result = CliRunner().invoke(app, ["heads", "fit", str(tiny_model_dir), "--out", str(out), "--sentences", "64",
                                      "--passages", "16", "--steps", "3", "--batch-size", "16", "--eval-items", "60"])
    assert result.exit_code == 0, result.output
    assert "fitting heads" in result.stderr  # the progress bar (pooled states may come from the cache)
    m = load_manifest(out)
    assert m.heads is not None and m.heads.method == "distill"
    assert m.heads.data["split"] == "train" and m.heads.data["texts"] == 80
    assert m.heads.recipe["steps"] == 3 and m.heads.recipe["last_layer"] == "pca"
    assert m.budgets is not None and len(m.budgets.rows) == 9 and any(r.pareto for r in m.budgets.rows)
    assert "news_title_body" in m.budgets.suites and m.budgets.eval_items == 60
    assert LoadedModel(out, provider="cpu").verify_golden() > 0.9999
    assert all(v <= 1e-5 for k, v in m.parity.items() if k.startswith("heads_"))
    pca = CliRunner().invoke(app, ["heads", "fit", str(tiny_model_dir), "--out", str(tmp_path / "pca"),
                                   "--method", "pca", "--sentences", "64", "--no-budgets"])
    assert pca.exit_code == 0, pca.output
    assert load_manifest(tmp_path / "pca").heads.method == "pca"  # type: ignore[union-attr]
    bad = CliRunner().invoke(app, ["heads", "fit", str(tiny_model_dir), "--out", str(tmp_path / "x"),
                                   "--method", "svd"])
    assert bad.exit_code == 2
