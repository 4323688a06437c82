"""Pretraining on a tiny random BERT: span masking, the tied MLM head, the EMA target, a few steps lowering
both losses, and a `mipic pretrain` run whose outputs `mipic train --init` loads."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("datasets")

import numpy as np  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from mipic.training.config import ModelSection  # noqa: E402
from mipic.training.model import load_encoder  # noqa: E402
from mipic.training.pretrain import (  # noqa: E402
    FINAL_MLM_DIR,
    TIED_KEYS,
    PretrainModel,
    SpanMaskingCollator,
    build_pretrain_model,
    pretrain,
    span_mask,
)
from mipic.training.pretrain_config import (  # noqa: E402
    PRETRAIN_CONFIG_FILE,
    MaskingSection,
    PretrainConfig,
    load_pretrain_config,
)

CONFIGS = Path(__file__).resolve().parents[3] / "configs"
WORDS = "the a of to and in is it that for on with cat dog fox quick brown lazy jumps over embed layer dim model text short long".split()


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def make_sentences(n: int, seed: int = 0, lo: int = 3, hi: int = 12) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi))) for _ in range(n)]


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory: pytest.TempPathFactory, tiny_torch_model: Any) -> Path:
    """A BERT with hidden 32, 2 layers, 2 heads on the conftest tokenizer (vocab ~44), with dropout."""
    _, tokenizer, _ = tiny_torch_model
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64,
    )  # fmt: skip
    path = tmp_path_factory.mktemp("pretrain_base")
    transformers.BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def tiny_config(base: Path, out: Path, *overrides: str) -> PretrainConfig:
    return load_pretrain_config(
        CONFIGS / "jepa_tiny.yaml", [f"model.base={base}", f"train.output_dir={out}", *overrides]
    )


# --------------------------------------------------------------------------- masking


def test_span_mask_hits_the_budget_with_contiguous_spans() -> None:
    rng = np.random.default_rng(0)
    runs = []
    for _ in range(200):
        m = span_mask(40, 6, rng, span_p=0.2, max_span=10)
        assert m.sum() == 6
        edges = np.flatnonzero(np.diff(np.concatenate([[0], m.astype(int), [0]])))
        runs += list(edges[1::2] - edges[::2])
    assert np.mean(runs) > 2.0  # spans, not scattered tokens (single-token masking gives 1.0)
    assert span_mask(3, 10, rng).sum() == 3  # budget capped at n
    assert span_mask(0, 1, rng).sum() == 0
    single = span_mask(40, 6, rng, span_p=1.0)
    assert single.sum() == 6


def test_masking_honours_special_tokens_and_rate(tiny_torch_model: Any) -> None:
    _, tokenizer, _ = tiny_torch_model
    collator = SpanMaskingCollator(tokenizer, 64, MaskingSection(), seed=0)
    special = set(tokenizer.all_special_ids)
    masked = maskable = 0
    replaced = {"mask": 0, "random": 0, "kept": 0}
    for b in range(40):
        batch = collator([{"text": t} for t in make_sentences(32, seed=b, lo=5, hi=40)])
        ids, labels, clean = batch["input_ids"], batch["labels"], batch["target_input_ids"]
        attn = batch["attention_mask"].bool()
        pos = labels != -100
        is_special = torch.tensor([[int(i) in special for i in row] for row in clean.tolist()])
        assert not (pos & is_special).any(), "a special token was masked"
        assert not (pos & ~attn).any(), "padding was masked"
        assert torch.equal(ids[is_special], clean[is_special]), "a special token was replaced"
        assert torch.equal(ids[~pos], clean[~pos]), "an unmasked token changed"
        assert torch.equal(labels[pos], clean[pos])
        masked += int(pos.sum())
        maskable += int((attn & ~is_special).sum())
        replaced["mask"] += int((ids[pos] == tokenizer.mask_token_id).sum())
        replaced["kept"] += int((ids[pos] == clean[pos]).sum())
    replaced["random"] = masked - replaced["mask"] - replaced["kept"]
    assert masked / maskable == pytest.approx(0.15, abs=0.005)
    assert replaced["mask"] / masked == pytest.approx(0.8, abs=0.03)
    # Random draws can hit the original token (1/V of them): "kept" ≥ 10 %, "random" ≤ 10 %.
    assert replaced["random"] / masked == pytest.approx(0.1, abs=0.03)
    assert replaced["kept"] / masked == pytest.approx(0.1, abs=0.03)


def test_a_batch_always_has_a_masked_token(tiny_torch_model: Any) -> None:
    _, tokenizer, _ = tiny_torch_model
    for seed in range(20):
        collator = SpanMaskingCollator(tokenizer, 64, MaskingSection(rate=0.01), seed=seed)
        batch = collator([{"text": "cat"}, {"text": "dog"}])  # 1 maskable token each: budget usually 0
        assert int((batch["labels"] != -100).sum()) >= 1, seed


def test_masking_config_checks() -> None:
    with pytest.raises(ValueError, match="mask_token_prob \\+ random_token_prob must be <= 1"):
        load_pretrain_config(None, ["masking.mask_token_prob=0.9", "masking.random_token_prob=0.2"])
    with pytest.raises(ValueError, match=r"masking\.rat"):
        load_pretrain_config(None, ["masking.rat=0.2"])  # typos fail loudly
    for name in ("jepa_minilm", "mlm_minilm", "jepa_tiny"):
        load_pretrain_config(CONFIGS / f"{name}.yaml")


def test_mlm_and_jepa_configs_compare_like_with_like() -> None:
    """The control differs from the hybrid only in the objective (and where it writes)."""
    mlm, jepa = (load_pretrain_config(CONFIGS / f"{n}.yaml") for n in ("mlm_minilm", "jepa_minilm"))
    assert (mlm.objective, jepa.objective) == ("mlm", "mlm_jepa")
    for section in ("model", "masking", "data"):
        assert getattr(mlm, section) == getattr(jepa, section), section
    assert mlm.seed == jepa.seed
    assert mlm.train.model_copy(update={"output_dir": jepa.train.output_dir}) == jepa.train
    assert mlm.train.output_dir != jepa.train.output_dir


# --------------------------------------------------------------------------- model


def build(base: Path, *overrides: str) -> tuple[PretrainModel, Any]:
    cfg = tiny_config(base, Path("unused"), *overrides)
    encoder, tokenizer = load_encoder(cfg.model)
    torch.manual_seed(0)
    return build_pretrain_model(cfg, encoder), tokenizer


def test_mlm_head_is_tied_to_the_word_embeddings(tiny_base: Path) -> None:
    model, _ = build(tiny_base)
    decoder = model.objective.mlm_head.predictions.decoder
    embedding = model.encoder.get_input_embeddings().weight
    assert decoder.weight is embedding
    assert decoder.bias is model.objective.mlm_head.predictions.bias
    names = [n for n, p in model.named_parameters() if p is embedding]
    assert names == ["encoder.embeddings.word_embeddings.weight"]  # one parameter, optimised once
    assert set(model.state_dict()) - set(model.state_dict_to_save()) == set(TIED_KEYS)
    # The head is initialised as BertForMaskedLM does it: zero bias, unit LayerNorm.
    assert torch.count_nonzero(model.objective.mlm_head.predictions.bias) == 0
    assert torch.all(model.objective.mlm_head.predictions.transform.LayerNorm.weight == 1)


def test_target_gets_no_gradient_and_moves_only_by_ema(tiny_base: Path, tiny_torch_model: Any) -> None:
    model, tokenizer = build(tiny_base)
    assert model.target_encoder is not None
    target = model.target_encoder
    assert not any(p.requires_grad for p in target.parameters())
    model.train()
    assert not target.training  # no dropout in the targets
    collator = SpanMaskingCollator(tokenizer, 16, MaskingSection(), seed=0)
    batch = collator([{"text": t} for t in make_sentences(8)])
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    before = [p.detach().clone() for p in target.parameters()]
    out = model(**batch)
    out["loss"].backward()
    assert all(p.grad is None for p in target.parameters())
    assert model.objective.jepa is not None and model.objective.jepa.balance.raw is not None
    assert model.objective.jepa.balance.raw.grad is not None
    opt.step()
    assert all(torch.equal(a, p) for a, p in zip(before, target.parameters(), strict=True)), "the optimizer moved it"
    model.set_progress(0.5)
    decay = model.current_decay
    assert decay == pytest.approx((0.9 + 0.99) / 2)  # jepa_tiny.yaml: 0.9 → 0.99, linear
    model.update_target()
    for old, new, online in zip(before, target.parameters(), model.encoder.parameters(), strict=True):
        assert torch.allclose(new, decay * old + (1 - decay) * online.detach(), atol=1e-6)


def test_mlm_objective_has_no_target(tiny_base: Path) -> None:
    model, tokenizer = build(tiny_base, "objective=mlm")
    assert model.target_encoder is None and model.objective.jepa is None
    batch = SpanMaskingCollator(tokenizer, 16, MaskingSection(), seed=0)([{"text": t} for t in make_sentences(4)])
    out = model(**batch)
    assert set(out["terms"]) == {"mlm", "total"}
    model.update_target()  # a no-op, not an error


def test_a_few_steps_lower_both_losses(tiny_base: Path) -> None:
    model, tokenizer = build(tiny_base, "model.dropout=0.0")
    # Learnable data: two repeated sentences, re-masked every step (the probe has masks of its own).
    texts = ["the quick brown fox jumps over the lazy dog"] * 8 + ["a cat is on the text with a dog"] * 8
    probe = SpanMaskingCollator(tokenizer, 16, MaskingSection(), seed=12345)([{"text": t} for t in texts])

    def losses() -> tuple[float, float]:
        model.eval()
        with torch.no_grad():
            terms = model(**probe)["terms"]
        model.train()
        return terms["mlm"], terms["jepa"]

    mlm0, jepa0 = losses()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=3e-3)
    for step in range(30):
        batch = SpanMaskingCollator(tokenizer, 16, MaskingSection(), seed=step)([{"text": t} for t in texts])
        model.set_progress(step / 30)
        opt.zero_grad()
        model(**batch)["loss"].backward()
        opt.step()
        model.update_target()
    mlm1, jepa1 = losses()
    assert mlm1 < 0.7 * mlm0, (mlm0, mlm1)
    assert jepa1 < 0.7 * jepa0, (jepa0, jepa1)


# --------------------------------------------------------------------------- a real run


@pytest.fixture(scope="module")
def cli_run(tiny_base: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`mipic pretrain` for 4 steps (checkpoints at 2 and 4) on the tiny model."""
    from typer.testing import CliRunner

    from mipic.cli import app

    tmp = tmp_path_factory.mktemp("pretrain_run")
    sentences = tmp / "sentences.txt"
    sentences.write_text("\n".join(make_sentences(64)) + "\n", encoding="utf-8")
    out = tmp / "run"
    result = CliRunner().invoke(app, [
        "pretrain", "--config", str(CONFIGS / "jepa_tiny.yaml"), "--output-dir", str(out),
        "--set", f"model.base={tiny_base}", "--set", f"data.train_file={sentences}",
        "--set", "train.max_steps=4", "--set", "train.save_steps=2",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "final encoder in" in result.output
    return out


def test_run_writes_loadable_encoder_and_checkpoints(cli_run: Path, tiny_base: Path) -> None:
    final = cli_run / "final"
    assert (final / "config.json").is_file() and (final / "tokenizer.json").is_file()
    assert (final / PRETRAIN_CONFIG_FILE).is_file()
    state = load_file(str(final / "model.safetensors"))
    # `mipic train --init` accepts final/ and a checkpoint-N; both give the run's encoder weights.
    from_final, _ = load_encoder(ModelSection(base=tiny_base, init=final))
    from_ckpt, _ = load_encoder(ModelSection(base=tiny_base, init=cli_run / "checkpoint-4"))
    for name, value in from_final.state_dict().items():
        assert torch.equal(value, state[name]), name
        assert torch.equal(from_ckpt.state_dict()[name], value), name
    ckpt = load_file(str(cli_run / "checkpoint-4" / "model.safetensors"))
    assert not set(TIED_KEYS) & set(ckpt), "tied aliases must be stored once"
    assert any(k.startswith("target_encoder.") for k in ckpt)
    assert (cli_run / "checkpoint-4" / PRETRAIN_CONFIG_FILE).is_file()


def test_run_logs_the_balance_trajectory(cli_run: Path) -> None:
    log = json.loads((cli_run / "final" / "training_log.json").read_text(encoding="utf-8"))
    steps = log["steps"]
    assert [s["step"] for s in steps] == [1.0, 2.0, 3.0, 4.0]
    shares = [s["balance_mlm"] for s in steps]
    assert all(0.0 < v < 1.0 for v in shares)
    assert shares[0] == pytest.approx(0.5) and shares[-1] != shares[0]  # it moves
    assert all({"mlm", "jepa", "log_var_mlm", "log_var_jepa", "ema_decay"} <= set(s) for s in steps)
    assert log["objective"] == "mlm_jepa"


def test_final_mlm_is_a_tied_bert_for_masked_lm(cli_run: Path) -> None:
    mlm = transformers.BertForMaskedLM.from_pretrained(cli_run / FINAL_MLM_DIR)
    assert mlm.cls.predictions.decoder.weight.data_ptr() == mlm.bert.embeddings.word_embeddings.weight.data_ptr()
    encoder = transformers.AutoModel.from_pretrained(cli_run / "final")
    assert torch.equal(mlm.bert.embeddings.word_embeddings.weight, encoder.embeddings.word_embeddings.weight)
    assert torch.equal(mlm.bert.encoder.layer[-1].output.dense.weight, encoder.encoder.layer[-1].output.dense.weight)


def test_masks_depend_only_on_seed_and_texts(tiny_torch_model: Any) -> None:
    _, tokenizer, _ = tiny_torch_model
    texts = [{"text": t} for t in make_sentences(16, lo=10, hi=20)]
    a = SpanMaskingCollator(tokenizer, 64, MaskingSection(), seed=3)
    b = SpanMaskingCollator(tokenizer, 64, MaskingSection(), seed=3)
    a(texts[::-1])  # a different batch first: no hidden generator state
    assert torch.equal(a(texts)["input_ids"], b(texts)["input_ids"])
    assert not torch.equal(
        a(texts)["labels"], SpanMaskingCollator(tokenizer, 64, MaskingSection(), seed=4)(texts)["labels"]
    )


def test_resume_reproduces_the_uninterrupted_run(cli_run: Path, tiny_base: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    shutil.copytree(cli_run, out)
    shutil.rmtree(out / "checkpoint-4")
    shutil.rmtree(out / "final")
    sentences = (cli_run.parent / "sentences.txt").read_text(encoding="utf-8").splitlines()
    cfg = tiny_config(tiny_base, out, "train.max_steps=4", "train.save_steps=2", "train.resume=true", "save_mlm=false")
    result = pretrain(cfg, sentences=sentences)
    assert result.global_step == 4
    # Same masks, same dropout, and the target, the tied head and the balance restored: the same weights,
    # the EMA target included.
    resumed = load_file(str(out / "checkpoint-4" / "model.safetensors"))
    straight = load_file(str(cli_run / "checkpoint-4" / "model.safetensors"))
    assert set(resumed) == set(straight)
    for key, value in straight.items():
        assert torch.allclose(resumed[key], value, atol=1e-6), key
    log = json.loads((out / "final" / "training_log.json").read_text(encoding="utf-8"))
    assert [s["step"] for s in log["steps"]] == [1.0, 2.0, 3.0, 4.0]
    assert log["steps"][2]["ema_decay"] == pytest.approx(0.9 + (0.99 - 0.9) * 2 / 4)  # the schedule resumed
