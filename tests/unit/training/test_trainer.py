"""Trainer: a few real steps on the tiny random BERT (loss goes down, checkpoints carry their config,
resume reproduces the uninterrupted run), every objective's forward/backward, init and export wiring."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("datasets")

from safetensors.torch import load_file  # noqa: E402

from mipic.training.config import CONFIG_FILE, MRLSection, TrainConfig, load_config  # noqa: E402
from mipic.training.losses import TERM_NAMES  # noqa: E402
from mipic.training.model import SimCSEModel, load_encoder  # noqa: E402
from mipic.training.objectives import build_objective, trained_budgets  # noqa: E402
from mipic.training.run import resume_checkpoint, warn_if_config_changed  # noqa: E402
from mipic.training.trainer import (  # noqa: E402
    LOG_FILE,
    MipicTrainer,
    SentenceCollator,
    TermLog,
    build_dataset,
    train,
    training_arguments,
)

CONFIGS = Path(__file__).resolve().parents[3] / "configs"
WORDS = ["the", "a", "an", "of", "to", "and", "in", "is", "it", "that", "for", "on", "with", "as", "was", "at", "by", "be", "this", "are", "from", "or", "have", "not", "cat", "dog", "fox", "quick", "brown", "lazy", "jumps", "over", "embed", "layer", "dim", "model", "text", "short", "long"]
STEPS = 8


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def make_sentences(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) for _ in range(n)]


def smoke_config(base: Path, out: Path, *overrides: str) -> TrainConfig:
    return load_config(
        CONFIGS / "tiny_smoke.yaml",
        [f"model.base={base}", f"train.output_dir={out}", f"train.max_steps={STEPS}", *overrides],
    )


def fixed_batch_loss(model_dir: Path, cfg: TrainConfig, texts: list[str]) -> float:
    """MRL loss of an encoder dir on a fixed batch with dropout off: a noise-free training signal."""
    encoder, tokenizer = load_encoder(cfg.model.model_copy(update={"base": model_dir, "init": None}))
    model = SimCSEModel(encoder, build_objective(MRLSection(dims=[8, 16, 32]), 32, 3)).eval()
    batch = SentenceCollator(tokenizer, cfg.data.max_length)([{"text": t} for t in texts])
    with torch.no_grad():
        return float(model(**batch)["loss"])


@pytest.fixture(scope="module")
def smoke_run(tiny_torch_model: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[TrainConfig, Any, Path]:
    """One 8-step MIPIC run (checkpoints at steps 4 and 8), shared by the tests below."""
    _, _, base = tiny_torch_model
    cfg = smoke_config(base, tmp_path_factory.mktemp("smoke") / "run")
    return cfg, train(cfg, sentences=make_sentences(256)), base


def test_loss_decreases(smoke_run: tuple[TrainConfig, Any, Path]) -> None:
    cfg, result, base = smoke_run
    probe = make_sentences(16, seed=123)
    before = fixed_batch_loss(base, cfg, probe)
    after = fixed_batch_loss(result.final_dir, cfg, probe)
    assert after < 0.9 * before, (before, after)
    # The logged training loss goes down too (first two vs last two steps).
    steps = json.loads((result.final_dir / LOG_FILE).read_text())["steps"]
    assert len(steps) == STEPS
    totals = [s["total"] for s in steps]
    assert sum(totals[-2:]) < sum(totals[:2])


def test_every_checkpoint_says_how_it_was_made(smoke_run: tuple[TrainConfig, Any, Path]) -> None:
    cfg, result, _ = smoke_run
    assert result.global_step == STEPS
    for step in (4, 8):
        ckpt = result.output_dir / f"checkpoint-{step}"
        assert load_config(ckpt / CONFIG_FILE) == cfg
        log = json.loads((ckpt / LOG_FILE).read_text())
        assert log["global_step"] == step
        assert [int(s["step"]) for s in log["steps"]] == list(range(1, step + 1))
        assert (ckpt / "model.safetensors").is_file() and (ckpt / "optimizer.pt").is_file()
        # The wrapper checkpoint holds the objective's heads (PIC projectors) and term-scale buffers too.
        keys = load_file(str(ckpt / "model.safetensors")).keys()
        assert any(k.startswith("objective.pic.projectors.") for k in keys)
        assert "objective.term_scale" in keys
    final = result.final_dir
    for name in ("config.json", "model.safetensors", "tokenizer.json", CONFIG_FILE, LOG_FILE):
        assert (final / name).is_file(), name
    assert load_config(final / CONFIG_FILE) == cfg
    assert load_config(result.output_dir / CONFIG_FILE) == cfg


def test_terms_are_logged(smoke_run: tuple[TrainConfig, Any, Path]) -> None:
    _, result, _ = smoke_run
    log = json.loads((result.final_dir / LOG_FILE).read_text())
    lines = [e for e in log["log_history"] if "loss" in e]
    assert len(lines) == STEPS  # logging_steps: 1 in tiny_smoke.yaml
    for name in (*TERM_NAMES, "sia_attn", "sia_cka", "total"):
        assert all(f"term/{name}" in e for e in lines), name
    # One step per log line: the logged term mean equals that step's recorded value.
    for line, step in zip(lines, log["steps"], strict=True):
        assert line["term/total"] == pytest.approx(step["total"], abs=1e-5)
        assert line["loss"] == pytest.approx(step["total"], abs=1e-3)
    assert log["metrics"]["train_steps_per_second"] > 0


def test_resume_reproduces_the_uninterrupted_run(
    smoke_run: tuple[TrainConfig, Any, Path], tmp_path: Path
) -> None:
    cfg, result, _ = smoke_run
    # An interrupted copy of the run: only checkpoint-4 survived.
    out = tmp_path / "run"
    out.mkdir()
    shutil.copytree(result.output_dir / "checkpoint-4", out / "checkpoint-4")
    resumed_cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"output_dir": out, "resume": True})})
    resumed = train(resumed_cfg, sentences=make_sentences(256))
    assert resumed.global_step == STEPS
    a = load_file(str(result.final_dir / "model.safetensors"))
    b = load_file(str(resumed.final_dir / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)
    full = json.loads((result.final_dir / LOG_FILE).read_text())["steps"]
    again = json.loads((resumed.final_dir / LOG_FILE).read_text())["steps"]
    assert [round(s["total"], 5) for s in again] == [round(s["total"], 5) for s in full]


def test_resume_true_finds_the_latest_checkpoint(tmp_path: Path) -> None:
    out = tmp_path / "run"
    cfg = load_config(None, [f"train.output_dir={out}", "train.resume=true"])
    assert resume_checkpoint(cfg.train) is None  # nothing yet: start from scratch
    for step in (5, 10):
        (out / f"checkpoint-{step}").mkdir(parents=True)
    assert resume_checkpoint(cfg.train) == out / "checkpoint-10"
    explicit = load_config(None, [f"train.resume={tmp_path / 'missing'}"])
    with pytest.raises(ValueError, match="is not a checkpoint directory"):
        resume_checkpoint(explicit.train)


def test_resume_warns_about_a_changed_config(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from mipic.training.config import save_config

    saved = load_config(None, [f"train.output_dir={tmp_path}"])
    save_config(saved, tmp_path)
    with caplog.at_level("WARNING", logger="mipic.training.run"):
        warn_if_config_changed(saved.model_copy(update={"train": saved.train.model_copy(
            update={"resume": True, "output_dir": tmp_path / "elsewhere"})}), tmp_path, CONFIG_FILE, load_config)
        assert not caplog.records  # where the run lives and the resume flag may change silently
        warn_if_config_changed(load_config(None, ["train.lr=1e-3", "loss.alpha=0.2"]), tmp_path, CONFIG_FILE,
                               load_config)
    assert "changed config: loss.alpha, train.lr" in caplog.text


def test_init_from_checkpoint_loads_its_encoder(smoke_run: tuple[TrainConfig, Any, Path]) -> None:
    cfg, result, base = smoke_run
    ckpt = result.output_dir / "checkpoint-4"
    encoder, tokenizer = load_encoder(cfg.model.model_copy(update={"base": base, "init": ckpt}))
    saved = load_file(str(ckpt / "model.safetensors"))
    for name, value in encoder.state_dict().items():
        if not name.startswith("pooler."):
            torch.testing.assert_close(value, saved[f"encoder.{name}"])
    # An encoder dir (a run's final/) works as init too.
    encoder2, _ = load_encoder(cfg.model.model_copy(update={"base": base, "init": result.final_dir}))
    final = load_file(str(result.final_dir / "model.safetensors"))
    torch.testing.assert_close(encoder2.state_dict()["embeddings.word_embeddings.weight"],
                               final["embeddings.word_embeddings.weight"])
    assert len(tokenizer) == len(WORDS) + 5


def test_init_rejects_a_foreign_checkpoint(tiny_torch_model: Any, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    _, _, base = tiny_torch_model
    (tmp_path / "trainer_state.json").write_text("{}")
    save_file({"something.weight": torch.zeros(2)}, str(tmp_path / "model.safetensors"))
    cfg = smoke_config(base, tmp_path / "out")
    with pytest.raises(ValueError, match="holds no encoder"):
        load_encoder(cfg.model.model_copy(update={"init": tmp_path}))


@pytest.mark.parametrize("loss", ["{objective: infonce}", "{objective: mrl, dims: [8, 16, 32]}",
                                  "{objective: adaptive_layer, dims: [8, 16, 32]}", None])
def test_each_objective_trains_the_encoder(tiny_torch_model: Any, loss: str | None) -> None:
    _, _, base = tiny_torch_model
    cfg = smoke_config(base, Path("unused"), *([f"loss={loss}"] if loss else []))  # None: tiny_smoke's mipic
    encoder, tokenizer = load_encoder(cfg.model)
    torch.manual_seed(0)
    model = SimCSEModel(encoder, build_objective(cfg.loss, 32, 3)).train()
    batch = SentenceCollator(tokenizer, 16)([{"text": t} for t in make_sentences(8)])
    out = model(**batch)
    out["loss"].backward()
    assert out["terms"]["total"] == pytest.approx(float(out["loss"].detach()), rel=1e-5)
    assert encoder.embeddings.word_embeddings.weight.grad is not None
    # The two views differ (dropout on), else SimCSE has nothing to learn from.
    assert encoder.config.hidden_dropout_prob == 0.1


def test_objective_none_saves_the_base(tiny_torch_model: Any, tmp_path: Path) -> None:
    _, _, base = tiny_torch_model
    cfg = smoke_config(base, tmp_path / "base", "loss={objective: none}", "model.dropout=null")
    result = train(cfg)
    assert result.global_step == 0
    a = load_file(str(base / "model.safetensors"))
    b = load_file(str(result.final_dir / "model.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k])
    assert load_config(result.final_dir / CONFIG_FILE) == cfg


def test_head_lr_gives_the_objective_its_own_group(tiny_torch_model: Any, tmp_path: Path) -> None:
    _, _, base = tiny_torch_model
    cfg = smoke_config(base, tmp_path / "o", "train.lr=1e-4", "train.head_lr=1e-2", "train.weight_decay=0.01")
    encoder, tokenizer = load_encoder(cfg.model)
    model = SimCSEModel(encoder, build_objective(cfg.loss, 32, 3))
    trainer = MipicTrainer(
        model=model,
        args=training_arguments(cfg),
        train_dataset=build_dataset(make_sentences(16), tokenizer, 16),
        data_collator=SentenceCollator(tokenizer, 16),
        term_log=TermLog(),
        head_lr=cfg.train.head_lr,
    )
    groups = trainer.create_optimizer().param_groups
    head_ids = {id(p) for p in model.objective.parameters()}
    for g in groups:
        is_head = {id(p) in head_ids for p in g["params"]}
        assert len(is_head) == 1
        assert g["lr"] == (1e-2 if is_head.pop() else 1e-4)
    assert sum(len(g["params"]) for g in groups) == len([p for p in model.parameters() if p.requires_grad])
    assert {g["weight_decay"] for g in groups} == {0.0, 0.01}


def test_trained_budgets_per_objective() -> None:
    def budgets(*overrides: str) -> list[tuple[int, int]]:
        return trained_budgets(load_config(CONFIGS / "mipic_minilm.yaml", overrides), 384, 6)

    assert len(budgets()) == 36  # distillation trains every (layer, dim)
    assert budgets("loss={objective: none}") == []
    assert budgets("loss={objective: infonce}", "distill.weight=0") == [(384, 6)]
    assert budgets("loss={objective: mrl}", "distill.weight=0") == [(d, 6) for d in (16, 32, 64, 128, 256, 384)]
    two_d = budgets("loss={objective: adaptive_layer}", "distill.weight=0")
    assert len(two_d) == 36 and two_d[0] == (16, 1) and two_d[-1] == (384, 6)
    assert budgets("distill.weight=0") == [
        (32, 2), (64, 3), (128, 4), (256, 5), (16, 6), (32, 6), (64, 6), (128, 6), (256, 6), (384, 6)]
    # distillation alone trains the objective's dims (loss.dims) at its layers, unless distill.dims says otherwise
    assert budgets("distill.layers=[2]", "loss.dims=[32, 384]", "loss.chain=null") == [(32, 2), (384, 2), (32, 6),
                                                                                        (384, 6)]
    assert budgets("loss={objective: distill}", "distill.layers=[3]", "distill.dims=[64]") == [(64, 3)]


def test_too_few_sentences_is_an_error(tiny_torch_model: Any, tmp_path: Path) -> None:
    _, _, base = tiny_torch_model
    with pytest.raises(ValueError, match="fewer than one step needs"):
        train(smoke_config(base, tmp_path / "x"), sentences=make_sentences(3))


def test_train_file_is_read(tiny_torch_model: Any, tmp_path: Path) -> None:
    from mipic.training.trainer import load_training_sentences

    path = tmp_path / "s.txt"
    path.write_text("one two\n\n  three four  \nfive\n")
    cfg = load_config(None, [f"data.train_file={path}", "data.n_sentences=2"])
    assert load_training_sentences(cfg) == ["one two", "three four"]


def test_cli_train_exports_with_trained_budgets(tiny_torch_model: Any, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from mipic.cli import app
    from mipic.modeldir.manifest import load_manifest

    _, _, base = tiny_torch_model
    sentences = tmp_path / "s.txt"
    sentences.write_text("\n".join(make_sentences(64)))
    out = tmp_path / "cli_run"
    result = CliRunner().invoke(app, [
        "train", "--config", str(CONFIGS / "tiny_smoke.yaml"),
        "--set", f"model.base={base}", "--set", f"data.train_file={sentences}",
        "--set", "train.max_steps=1", "--set", "export=true", "--set", "export.name=tiny-cli",
        "--output-dir", str(out),
    ])
    assert result.exit_code == 0, result.output
    assert f"final encoder in {out / 'final'}" in result.output
    assert f"exported model in {out / 'onnx'}" in result.output
    manifest = load_manifest(out / "onnx")
    assert manifest.name == "tiny-cli"
    assert [(b.dim, b.layer) for b in manifest.trained_budgets] == [(8, 1), (16, 2), (8, 3), (16, 3), (32, 3)]
    assert manifest.source["objective"] == "mipic"


def test_cli_train_reports_bad_config(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from mipic.cli import app

    result = CliRunner().invoke(app, ["train", "--config", str(CONFIGS / "tiny_smoke.yaml"),
                                      "--set", "loss.alpah=0.3"])
    assert result.exit_code == 2
    assert "loss.alpah: Extra inputs are not permitted" in result.output


def test_report_to_tensorboard_writes_event_files(tiny_torch_model: Any, tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    _, _, base = tiny_torch_model
    cfg = smoke_config(base, tmp_path / "run", "train.max_steps=2", "train.report_to=[tensorboard]")
    train(cfg, sentences=make_sentences(64))
    assert list((tmp_path / "run" / "logs").rglob("events.out.tfevents.*"))
    off = smoke_config(base, tmp_path / "off", "train.max_steps=1")
    assert off.train.report_to == []  # off by default
    train(off, sentences=make_sentences(64))
    assert not (tmp_path / "off" / "logs").exists()
