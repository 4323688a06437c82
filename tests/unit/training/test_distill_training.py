"""Issue 12's training signal on tiny models: a frozen teacher, self-distillation through trainable exit heads,
LoRA adapters that merge exactly, weak pairs, and exact resume."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from safetensors.torch import load_file  # noqa: E402
from tests.conftest import TINY_HIDDEN, TINY_LAYERS, random_heads, training_sentences  # noqa: E402

from mipic.modeldir.heads import HEADS_FILE, load_heads  # noqa: E402
from mipic.training.config import TrainConfig, load_config  # noqa: E402
from mipic.training.losses import EncoderOutputs, SelfDistillLoss  # noqa: E402
from mipic.training.model import build_model, load_encoder, merged_encoder, wrap_lora  # noqa: E402
from mipic.training.objectives import trained_budgets  # noqa: E402
from mipic.training.release import checkpoint_heads  # noqa: E402
from mipic.training.trainer import SentenceCollator, train  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[3] / "configs"
STEPS = 6

pytestmark = pytest.mark.usefixtures("torch_one_thread")




def distill_config(base: Path, out: Path, heads: Path, *overrides: str) -> TrainConfig:
    return load_config(CONFIGS / "tiny_smoke.yaml", [
        f"model.base={base}", f"train.output_dir={out}", f"train.max_steps={STEPS}", "train.save_steps=3",
        f"model.heads_init={heads}", "model.lora.enabled=true", "model.lora.r=4", "distill.weight=1.0",
        "distill.anchor_weight=1.0", *overrides])


def test_distillation_is_zero_when_the_student_is_the_teacher_at_full_budget() -> None:
    torch.manual_seed(0)
    teacher = torch.randn(16, 32)
    rotation, _ = torch.linalg.qr(torch.randn(32, 32))  # an orthogonal last-layer head
    loss = SelfDistillLoss([(32, 3)], temperature=0.05, anchor_weight=1.0)
    readouts = [torch.randn(16, 32), torch.randn(16, 32), teacher @ rotation.T]
    assert float(loss(readouts, teacher @ rotation.T)) == pytest.approx(0.0, abs=1e-6)
    assert float(SelfDistillLoss([(32, 3)])([readouts[0]] * 3, teacher)) > 0.1
    with pytest.raises(ValueError, match="budgets must not be empty"):
        SelfDistillLoss([])


def test_teacher_gets_no_gradient_and_does_not_change(tiny_torch_model: Any, heads_file: Path, tmp_path: Path) -> None:
    _, _, ckpt = tiny_torch_model
    cfg = distill_config(ckpt, tmp_path, heads_file)
    encoder, tokenizer = load_encoder(cfg.model)
    model = build_model(cfg, encoder)
    teacher = model.teacher
    assert teacher is not None and not teacher.training
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    assert not any(k.startswith("_teacher") or "teacher" in k for k in model.state_dict())  # never checkpointed
    assert all(not p.requires_grad for p in teacher.parameters())
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    batch = SentenceCollator(tokenizer, 16)([{"text": t, "pos": t} for t in training_sentences(8)])
    model.train()
    for _ in range(3):
        out = model(**batch)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    assert out["terms"]["distill_kl"] > 0
    assert all(p.grad is None for p in teacher.parameters())
    for k, v in teacher.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    # LoRA: only adapters and heads train, the base weights under the adapters stay as loaded
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or n.startswith(("heads.", "objective.")) for n in trainable)


def test_adapter_merge_reproduces_the_unmerged_forward(tiny_torch_model: Any) -> None:
    import copy

    from peft.tuners.lora import LoraLayer

    from mipic.training.config import LoraSection

    model, tokenizer, _ = tiny_torch_model
    wrapped = wrap_lora(copy.deepcopy(model), LoraSection(enabled=True, r=4, alpha=8))
    torch.manual_seed(3)
    for module in wrapped.modules():
        if isinstance(module, LoraLayer):
            for lin in module.lora_B.values():
                torch.nn.init.normal_(lin.weight, std=0.2)  # B starts at zero: make the adapter matter
    batch = tokenizer(training_sentences(5), padding=True, return_tensors="pt")
    wrapped.eval()
    with torch.no_grad():
        unmerged = wrapped(**batch, output_hidden_states=True).hidden_states
        base = model(**batch, output_hidden_states=True).hidden_states
        merged = merged_encoder(wrapped)(**batch, output_hidden_states=True).hidden_states
    assert float((unmerged[-1] - base[-1]).abs().max()) > 1e-2  # the adapter changes the output
    for a, b in zip(unmerged, merged, strict=True):
        assert float((a - b).abs().max()) <= 1e-5


def test_training_with_pairs_heads_and_lora_saves_adapter_heads_and_merged_encoder(
    tiny_torch_model: Any, heads_file: Path, tmp_path: Path
) -> None:
    _, _, ckpt = tiny_torch_model
    cfg = distill_config(ckpt, tmp_path / "run", heads_file)
    texts = training_sentences(128)
    positives = [t if i % 2 else " ".join(t.split()[:2]) for i, t in enumerate(texts)]  # half are weak pairs
    result = train(cfg, sentences=texts, positives=positives)
    final = result.final_dir
    assert (final / "adapter" / "adapter_model.safetensors").is_file()
    adapter_mb = (final / "adapter" / "adapter_model.safetensors").stat().st_size / 1e6
    assert adapter_mb < 1.0
    trained = load_heads(final / HEADS_FILE, TINY_LAYERS, TINY_HIDDEN)
    init = random_heads()
    assert not np.allclose(trained.weight[0], init.weight[0])  # shallow heads trained
    np.testing.assert_array_equal(trained.weight[-1], init.weight[-1])  # the last one is fixed
    state = load_file(str(final / "model.safetensors"))
    assert not any("lora" in k for k in state)  # merged: a plain encoder for eval and export
    assert (TINY_HIDDEN, 1) in trained_budgets(cfg, TINY_HIDDEN, TINY_LAYERS)
    found = checkpoint_heads(final)  # what export puts in the manifest: the recipe names the init by content
    assert found is not None
    recipe = found[1].recipe
    assert recipe["heads_init"] == str(heads_file) and recipe["steps"] == cfg.train.max_steps
    assert recipe["anchor_weight"] == cfg.distill.anchor_weight == 1.0  # the full-budget anchor is part of the recipe
    assert recipe["heads_init_sha256"] == hashlib.sha256(heads_file.read_bytes()).hexdigest()


def test_resume_after_interruption_reproduces_weights_exactly(
    tiny_torch_model: Any, heads_file: Path, tmp_path: Path
) -> None:
    _, _, ckpt = tiny_torch_model
    texts = training_sentences(128)
    full = train(distill_config(ckpt, tmp_path / "full", heads_file), sentences=texts, positives=texts)
    out = tmp_path / "resumed"
    out.mkdir()
    shutil.copytree(full.output_dir / "checkpoint-3", out / "checkpoint-3")  # the run died after step 3
    resumed = train(distill_config(ckpt, out, heads_file, "train.resume=true"), sentences=texts, positives=texts)
    assert resumed.global_step == STEPS
    a, b = load_file(str(full.final_dir / "model.safetensors")), load_file(str(resumed.final_dir / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    np.testing.assert_array_equal(load_heads(full.final_dir / HEADS_FILE, TINY_LAYERS, TINY_HIDDEN).weight,
                                  load_heads(resumed.final_dir / HEADS_FILE, TINY_LAYERS, TINY_HIDDEN).weight)
    # resumed once more, at max_steps: loaded, not stepped (the Trainer alone would take a step STEPS + 1)
    again = train(distill_config(ckpt, out, heads_file, "train.resume=true"), sentences=texts, positives=texts)
    assert again.global_step == STEPS and (out / f"checkpoint-{STEPS}").is_dir()
    c = load_file(str(again.final_dir / "model.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], c[k], rtol=0, atol=0)
    np.testing.assert_array_equal(load_heads(full.final_dir / HEADS_FILE, TINY_LAYERS, TINY_HIDDEN).weight,
                                  load_heads(again.final_dir / HEADS_FILE, TINY_LAYERS, TINY_HIDDEN).weight)


def test_readout_makes_losses_see_the_served_vectors() -> None:
    hidden = tuple(torch.randn(4, 5, 8) for _ in range(3))
    mask = torch.ones(4, 5, dtype=torch.long)
    plain = EncoderOutputs(hidden, mask)
    doubled = EncoderOutputs(hidden, mask, readout=lambda layer, x: 2 * x)
    torch.testing.assert_close(doubled.pooled(2), 2 * plain.pooled(2))
    torch.testing.assert_close(doubled.pooled(0), plain.pooled(0))  # the embedding block has no head


def test_continuation_starts_the_adapter_from_a_saved_one_and_keeps_the_base_as_teacher(
    tiny_torch_model: Any, heads_file: Path, tmp_path: Path
) -> None:
    _, tokenizer, ckpt = tiny_torch_model
    texts = training_sentences(64)
    first = train(distill_config(ckpt, tmp_path / "first", heads_file), sentences=texts, positives=texts)
    adapter = first.final_dir / "adapter"
    cfg = distill_config(ckpt, tmp_path / "second", first.final_dir, f"model.lora.init={adapter}")
    encoder, _ = load_encoder(cfg.model)
    base = {k: v.clone() for k, v in encoder.state_dict().items()}
    model = build_model(cfg, encoder)
    batch = tokenizer(training_sentences(5), padding=True, return_tensors="pt")
    merged, _ = load_encoder(load_config(CONFIGS / "tiny_smoke.yaml", [f"model.base={first.final_dir}"]).model)
    model.eval()
    merged.eval()
    with torch.no_grad():  # the continued adapter starts where the first run's merged encoder ended
        start = model.encoder(**batch).last_hidden_state
        ended = merged(**batch).last_hidden_state
    assert float((start - ended).abs().max()) <= 1e-5
    teacher = model.teacher
    assert teacher is not None
    for k, v in teacher.state_dict().items():  # the teacher is the base as loaded, not the adapted encoder
        torch.testing.assert_close(v, base[k], rtol=0, atol=0)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any("lora_" in n for n in trainable)  # loaded trainable, not frozen for inference
    second = train(cfg, sentences=texts, positives=texts)
    found = checkpoint_heads(second.final_dir)
    assert found is not None
    digest = hashlib.sha256((adapter / "adapter_model.safetensors").read_bytes()).hexdigest()
    assert found[1].recipe["lora_init"] == str(adapter) and found[1].recipe["lora_init_sha256"] == digest
    with pytest.raises(ValueError, match="r=4"):  # a different shape fails loudly
        build_model(distill_config(ckpt, tmp_path / "third", heads_file, f"model.lora.init={adapter}",
                                   "model.lora.r=8"), load_encoder(cfg.model)[0])


def test_teacher_table_holds_the_per_step_targets(tiny_torch_model: Any, heads_file: Path, tmp_path: Path) -> None:
    from mipic.training.losses import mean_pool
    from mipic.training.teacher import TeacherTable, text_keys

    _, _, ckpt = tiny_torch_model
    cfg = distill_config(ckpt, tmp_path, heads_file, "distill.align_weight=1.0")
    encoder, tokenizer = load_encoder(cfg.model)
    model = build_model(cfg, encoder)
    teacher = model.teacher
    assert teacher is not None
    texts = training_sentences(12)
    positives = [" ".join(t.split()[:3]) if i % 3 == 0 else t for i, t in enumerate(texts)]  # 4 weak pairs
    distinct, text_key, pos_key = text_keys(texts, positives)
    assert distinct == texts + [positives[i] for i in (0, 3, 6, 9)]  # a text paired with itself: one key
    assert text_key == list(range(12)) and pos_key == [12, 1, 2, 13, 4, 5, 14, 7, 8, 15, 10, 11]
    table = TeacherTable.build(teacher, tokenizer, distinct, 16, batch_size=5)  # other batches, other padding
    assert len(table) == 16
    one = SentenceCollator(tokenizer, 16)([{"text": t} for t in distinct])
    with torch.no_grad():
        direct = mean_pool(teacher(input_ids=one["input_ids"], attention_mask=one["attention_mask"]).last_hidden_state,
                           one["attention_mask"])
    assert float((table.lookup(torch.arange(16)) - direct).abs().max()) <= 1e-5
    assert float(direct.abs().max()) > 0.1
    # a step's distillation terms are the same looked up as computed (student in eval mode: no dropout)
    batch = SentenceCollator(tokenizer, 16)([{"text": t, "pos": p, "text_key": a, "pos_key": b}
                                             for t, p, a, b in zip(texts, positives, text_key, pos_key, strict=True)])
    model.eval()
    model.teacher_table = table
    looked_up = model(**batch)["terms"]
    model.teacher_table = None
    computed = model(**batch)["terms"]
    for term in ("distill_kl", "distill_anchor", "distill_align"):
        assert looked_up[term] == pytest.approx(computed[term], rel=1e-4, abs=1e-6)
    assert computed["distill_align"] > 1e-3  # the exits are not yet aligned: the comparison means something


def test_training_with_the_teacher_table_matches_training_without(
    tiny_torch_model: Any, heads_file: Path, tmp_path: Path
) -> None:
    _, _, ckpt = tiny_torch_model
    texts = training_sentences(64)
    positives = [t if i % 2 else " ".join(t.split()[:2]) for i, t in enumerate(texts)]
    runs = {flag: train(distill_config(ckpt, tmp_path / flag, heads_file, f"distill.cache_teacher={flag}"),
                        sentences=texts, positives=positives) for flag in ("true", "false")}
    a = load_file(str(runs["true"].final_dir / "model.safetensors"))
    b = load_file(str(runs["false"].final_dir / "model.safetensors"))
    base = load_file(str(ckpt / "model.safetensors"))
    moved = 0.0
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-4)  # the same run up to float rounding
        if k in base:
            moved = max(moved, float((a[k] - base[k]).abs().max()))
    assert moved > 1e-3  # and the run did train


def test_teacher_table_is_read_back_only_for_the_same_teacher_texts_and_settings(
    tiny_torch_model: Any, heads_file: Path, tmp_path: Path
) -> None:
    """A resumed run reads the saved table instead of running the teacher again; another teacher, other texts,
    another max length or an unreadable file build it afresh."""
    from mipic.training.teacher import TeacherTable

    _, _, ckpt = tiny_torch_model
    cfg = distill_config(ckpt, tmp_path / "run", heads_file)
    encoder, tokenizer = load_encoder(cfg.model)
    teacher = build_model(cfg, encoder).teacher
    assert teacher is not None
    forwards: list[int] = []
    teacher.register_forward_hook(lambda *_: forwards.append(1))
    texts = training_sentences(10)
    path = tmp_path / "table" / "teacher_table.pt"
    first = TeacherTable.load_or_build(path, teacher, tokenizer, texts, 16, batch_size=4)
    assert path.is_file() and len(forwards) == 3  # 10 texts in batches of 4
    again = TeacherTable.load_or_build(path, teacher, tokenizer, texts, 16, batch_size=4)
    assert len(forwards) == 3 and torch.equal(again.vectors, first.vectors)  # read back, bit for bit
    TeacherTable.load_or_build(path, teacher, tokenizer, texts[:-1], 16, batch_size=4)
    assert len(forwards) == 6  # other texts: built again (and saved over)
    TeacherTable.load_or_build(path, teacher, tokenizer, texts[:-1], 12, batch_size=4)
    assert len(forwards) == 9  # another max length
    with torch.no_grad():
        next(teacher.parameters()).add_(0.01)
    moved = TeacherTable.load_or_build(path, teacher, tokenizer, texts[:-1], 12, batch_size=4)
    assert len(forwards) == 12 and not torch.equal(moved.vectors, first.vectors[:-1])  # another teacher
    path.write_bytes(b"not a table")
    TeacherTable.load_or_build(path, teacher, tokenizer, texts[:-1], 12, batch_size=4)
    assert len(forwards) == 15 and not list(path.parent.glob("*.tmp"))


def test_a_training_run_keeps_its_teacher_table_for_resuming(
    tiny_torch_model: Any, heads_file: Path, tmp_path: Path
) -> None:
    from mipic.training.teacher import TABLE_FILE

    _, _, ckpt = tiny_torch_model
    texts = training_sentences(24)
    run = train(distill_config(ckpt, tmp_path / "run", heads_file), sentences=texts)
    saved = torch.load(run.output_dir / TABLE_FILE, weights_only=True)
    assert saved["vectors"].shape == (24, TINY_HIDDEN) and len(saved["fingerprint"]) == 64
