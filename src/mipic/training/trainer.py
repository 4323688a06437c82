"""``mipic train``: unsupervised SimCSE with a Matryoshka/MIPIC objective on ``transformers.Trainer``.

The Hugging Face Trainer brings progress bars, checkpoints, ``resume_from_checkpoint``, mixed
precision and multi-GPU (torchrun / accelerate) for free; this module adds only what it does not do:

* :class:`SentenceCollator` tokenizes raw sentences (the dataset holds text, not ids, so the
  tokenizer and ``max_length`` are a property of the run, not of a preprocessed cache);
* :class:`MipicTrainer` calls the objective, feeds the progressive-PIC schedule, logs every loss
  term, and gives the objective's fresh heads their own learning rate;
* :class:`RunFilesCallback` writes ``train_config.yaml`` and ``training_log.json`` into every
  checkpoint, so each one says how it was made;
* :func:`train` wires config → data → model → Trainer → ``output_dir/final`` (→ ``output_dir/onnx``).

Multi-GPU means DDP (``torchrun --nproc-per-node N -m mipic.cli train ...``); plain DataParallel is
refused. Under DDP each device contrasts against its own batch only (no all-gather of negatives), as
in the SimCSE reference code; ``batch_size`` is per device.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from torch import Tensor, nn
from transformers import (
    PreTrainedTokenizerBase,
    Trainer,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
    set_seed,
)
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from mipic.training.config import CONFIG_FILE, NoObjective, TrainConfig, load_config, save_config
from mipic.training.model import (
    OBJECTIVE_PREFIX,
    SimCSEModel,
    build_model,
    describe_parameters,
    load_encoder,
    merged_encoder,
)
from mipic.training.run import FINAL_DIR, RunSpec, TrainResult, run
from mipic.training.teacher import TABLE_FILE, TeacherTable, text_keys

logger = logging.getLogger(__name__)

#: Parameters that start fresh or small (the loss's projectors, the exit heads) and get ``train.head_lr``.
HEAD_PREFIXES = (OBJECTIVE_PREFIX, "heads.")
LOG_FILE = "training_log.json"
TEXT_COLUMN = "text"
POS_COLUMN = "pos"
LENGTH_COLUMN = "length"
TEXT_KEY_COLUMN = "text_key"  # one integer per distinct text (anchors and positives together): the teacher table's key
POS_KEY_COLUMN = "pos_key"
ADAPTER_DIR = "adapter"
ONNX_DIR = "onnx"


# --------------------------------------------------------------------------- data


class SentenceCollator:
    """``[{"text": str, "pos"?: str}, ...]`` → padded ``input_ids`` / ``attention_mask`` (/ ``token_type_ids``)
    tensors, plus ``pos_*`` tensors for the positives when the dataset has them, plus ``text_key`` /
    ``pos_key`` (int64, one per row) when it has those columns (the teacher table's keys).

    Pads to the longest text of the batch, not to ``max_length``: on CPU, padding is wasted compute.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, max_length: int) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length

    def _tokenize(self, texts: list[str]) -> dict[str, Tensor]:
        return dict(
            self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        )

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, Tensor]:
        out = self._tokenize([str(f[TEXT_COLUMN]) for f in features])
        if features and POS_COLUMN in features[0]:
            out.update({f"pos_{k}": v for k, v in self._tokenize([str(f[POS_COLUMN]) for f in features]).items()})
        for column in (TEXT_KEY_COLUMN, POS_KEY_COLUMN):
            if features and column in features[0]:
                out[column] = torch.tensor([int(f[column]) for f in features], dtype=torch.long)
        return out


def build_dataset(
    texts: Sequence[str], tokenizer: PreTrainedTokenizerBase, max_length: int, positives: Sequence[str] | None = None,
    *, keys: tuple[list[int], list[int] | None] | None = None,
) -> Dataset:
    """``text`` (and ``pos``, its positive) plus the token count ``length`` of the longer of the two (read by
    the Trainer's length-grouped sampler); with ``keys`` (from :func:`mipic.training.teacher.text_keys`),
    ``text_key`` (and ``pos_key``): each row's index into the teacher table."""
    lengths = [len(x) for x in tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]]
    columns: dict[str, list[Any]] = {TEXT_COLUMN: list(texts)}
    if positives is not None:
        if len(positives) != len(texts):
            raise ValueError(f"{len(texts)} texts but {len(positives)} positives")
        pos_ids = tokenizer(list(positives), truncation=True, max_length=max_length)["input_ids"]
        lengths = [max(a, len(b)) for a, b in zip(lengths, pos_ids, strict=True)]
        columns[POS_COLUMN] = list(positives)
    columns[LENGTH_COLUMN] = lengths
    if keys is not None:
        text_key, pos_key = keys
        if len(text_key) != len(texts) or (pos_key is not None and len(pos_key) != len(texts)):
            raise ValueError("one key per text (and per positive)")
        columns[TEXT_KEY_COLUMN] = list(text_key)
        if pos_key is not None:
            columns[POS_KEY_COLUMN] = list(pos_key)
    return Dataset.from_dict(columns)


def load_training_sentences(cfg: TrainConfig) -> list[str]:
    """The run's sentences: ``data.train_file`` if set, else the train split of the packaged corpora.

    The packaged loader never returns a text of the eval split, so the built-in eval suites stay held out.
    """
    data = cfg.data
    if data.train_file is not None:
        lines = Path(data.train_file).read_text(encoding="utf-8").splitlines()
        texts = [line.strip() for line in lines if line.strip()]
        return texts if data.n_sentences is None else texts[: data.n_sentences]
    from mipic.training.data import load_sentences

    return load_sentences(data.n_sentences, seed=data.seed, split="train", data_dir=data.data_dir, sources=data.sources)


def load_training_examples(cfg: TrainConfig) -> tuple[list[str], list[str] | None]:
    """(anchors, positives): with ``data.pair_kinds``, the weak pairs plus every sentence paired with itself
    (two dropout views), shuffled together with ``data.seed``; without, the sentences and ``None`` (SimCSE).

    Both loaders drop any text of the eval split, so the built-in suites stay held out.
    """
    sentences = load_training_sentences(cfg)
    if not cfg.data.pair_kinds:
        return sentences, None
    import random

    from mipic.training.data import load_pairs

    pairs = load_pairs(cfg.data.n_pairs, seed=cfg.data.seed, split="train", kinds=cfg.data.pair_kinds,  # type: ignore[arg-type]
                       data_dir=cfg.data.data_dir)
    examples = pairs + [(s, s) for s in sentences]
    random.Random(cfg.data.seed).shuffle(examples)
    return [a for a, _ in examples], [b for _, b in examples]


# --------------------------------------------------------------------------- term logging


@dataclass
class TermLog:
    """Every micro-batch's loss terms (``steps``), plus those not yet averaged into a Trainer log line."""

    steps: list[dict[str, float]] = field(default_factory=list)
    pending: list[dict[str, float]] = field(default_factory=list)

    def record(self, step: int, terms: dict[str, float]) -> None:
        self.steps.append({"step": float(step), **terms})
        self.pending.append(terms)

    def drain_means(self) -> dict[str, float]:
        """Mean of each term since the last call (what a Trainer log line covers)."""
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        for terms in self.pending:
            for name, value in terms.items():
                sums[name] = sums.get(name, 0.0) + value
                counts[name] = counts.get(name, 0) + 1
        self.pending.clear()
        return {name: sums[name] / counts[name] for name in sums}

    def restore(self, checkpoint: Path) -> None:
        """Continue the log of a checkpoint being resumed (its file covers exactly its steps)."""
        path = checkpoint / LOG_FILE
        if path.is_file():
            self.steps = list(json.loads(path.read_text(encoding="utf-8")).get("steps", []))
        self.pending.clear()


def write_training_log(
    out_dir: Path, term_log: TermLog, state: TrainerState | None, extra: dict[str, Any] | None = None
) -> Path:
    """``training_log.json``: per-step terms, the Trainer's log history and run metrics."""
    payload: dict[str, Any] = {
        "global_step": state.global_step if state is not None else 0,
        "steps": term_log.steps,
        "log_history": state.log_history if state is not None else [],
        **(extra or {}),
    }
    path = Path(out_dir) / LOG_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
    return path


def save_encoder_dir(final_dir: Path, encoder: nn.Module, tokenizer: PreTrainedTokenizerBase,
                     write_config: Callable[[Path], object], term_log: TermLog, state: TrainerState | None,
                     metrics: dict[str, float], extra: dict[str, Any] | None = None) -> None:
    """A run's ``final/``: a plain Hugging Face encoder dir (what eval and export load), the run's config
    (``write_config(final_dir)``) and ``training_log.json`` with the finite ``metrics`` and ``extra``. Every
    kind of run (train, pretrain, the untrained reference) writes its final directory so."""
    final_dir.mkdir(parents=True, exist_ok=True)
    encoder.save_pretrained(final_dir, safe_serialization=True)  # type: ignore[operator]
    tokenizer.save_pretrained(final_dir)
    write_config(final_dir)
    clean = {k: v for k, v in metrics.items() if math.isfinite(v)}
    write_training_log(final_dir, term_log, state, {"metrics": clean, **(extra or {})})


class RunFilesCallback(TrainerCallback):
    """Write the run's config and ``training_log.json`` into each ``checkpoint-N`` the Trainer saves.

    ``write_config(checkpoint_dir)`` writes the config file (``train_config.yaml`` by default; the
    pretrainer passes its own writer), so every kind of run shares one callback.
    """

    def __init__(
        self, config: TrainConfig, term_log: TermLog, write_config: Callable[[Path], object] | None = None
    ) -> None:
        self.term_log = term_log
        self.write_config = write_config or (lambda ckpt: save_config(config, ckpt / CONFIG_FILE))

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> TrainerControl:
        if state.is_world_process_zero and args.output_dir:
            ckpt = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
            if ckpt.is_dir():
                self.write_config(ckpt)
                write_training_log(ckpt, self.term_log, state)
        return control


# --------------------------------------------------------------------------- trainer


class MipicTrainer(Trainer):
    """``Trainer`` whose loss is the SimCSE objective of a :class:`SimCSEModel`."""

    def __init__(self, *args: Any, term_log: TermLog, head_lr: float | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.term_log = term_log
        self.head_lr = head_lr

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Tensor | Any],
        return_outputs: bool = False,
        num_items_in_batch: Tensor | int | None = None,
    ) -> Tensor | tuple[Tensor, Any]:
        wrapper = self.model
        if isinstance(wrapper, SimCSEModel) and self.state.max_steps > 0:
            # The progressive PIC schedule is a function of the step, so it survives resume unchanged.
            wrapper.set_progress(self.state.global_step / self.state.max_steps)
        outputs = model(**inputs)
        if model.training:
            self.term_log.record(self.state.global_step + 1, outputs["terms"])
        loss: Tensor = outputs["loss"]
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # A training log line carries "loss" (averaged by the Trainer over the interval): add each term's
        # mean over the same interval. Summary lines (train_runtime, ...) are passed through untouched.
        if "loss" in logs:
            logs.update({f"term/{k}": round(v, 6) for k, v in self.term_log.drain_means().items()})
        super().log(logs, start_time)

    def create_optimizer(self) -> torch.optim.Optimizer:
        model = self.model
        if self.optimizer is not None or self.head_lr is None or model is None:
            return super().create_optimizer()
        decay = set(self.get_decay_parameter_names(model))
        groups: list[dict[str, Any]] = []
        for is_head in (False, True):
            for is_decay in (True, False):
                params = [
                    p
                    for n, p in model.named_parameters()
                    if p.requires_grad and n.startswith(HEAD_PREFIXES) == is_head and (n in decay) == is_decay
                ]
                if params:
                    group: dict[str, Any] = {
                        "params": params,
                        "weight_decay": self.args.weight_decay if is_decay else 0.0,
                    }
                    if is_head:
                        group["lr"] = self.head_lr  # the LR scheduler scales each group's own initial lr
                    groups.append(group)
        # No model argument: only optimizers that take over the parameter list (GaLore, LOMO) need it, and
        # those cannot honour our groups anyway.
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args)
        self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        return self.optimizer


# --------------------------------------------------------------------------- entry point


def training_arguments(cfg: TrainConfig) -> TrainingArguments:
    """``TrainingArguments`` from the run's config. Under ``torchrun`` without CUDA the run is real DDP over
    gloo: the Trainer only treats several CPU processes as distributed when told to use the CPU."""
    t = cfg.train
    cpu_ddp = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
    return TrainingArguments(
        use_cpu=cpu_ddp,
        ddp_backend="gloo" if cpu_ddp else None,
        report_to=list(t.report_to) or "none",
        logging_dir=str(Path(t.output_dir) / "logs"),
        output_dir=str(t.output_dir),
        per_device_train_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum,
        learning_rate=t.lr,
        max_steps=t.max_steps,
        warmup_steps=t.warmup_steps,
        weight_decay=t.weight_decay,
        lr_scheduler_type=t.lr_scheduler,
        max_grad_norm=t.max_grad_norm,
        fp16=t.fp16,
        bf16=t.bf16,
        logging_strategy="steps",
        logging_steps=t.logging_steps,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        save_safetensors=True,
        seed=cfg.seed,
        # In-batch negatives: a short last batch would change the task (and SCR/SIR need B >= 2).
        dataloader_drop_last=True,
        group_by_length=t.group_by_length,
        length_column_name=LENGTH_COLUMN,
        dataloader_num_workers=t.dataloader_num_workers,
        dataloader_pin_memory=torch.cuda.is_available(),  # pinning is a no-op (and a warning) on CPU
        # The dataset holds raw text that the collator tokenizes; the Trainer must not drop that column.
        remove_unused_columns=False,
        label_names=[],
        # The pooler, and PIC steps not yet switched on, get no gradient.
        ddp_find_unused_parameters=True,
        disable_tqdm=t.disable_tqdm,
    )


def _teacher_device() -> torch.device:
    """Where the teacher table is computed: this process's GPU (``LOCAL_RANK`` under torchrun) if any, else CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def _export(cfg: TrainConfig, final_dir: Path, seconds: float) -> Path:
    from mipic.training.release import export_options_for, export_with_heads

    out_dir = Path(cfg.train.output_dir) / ONNX_DIR
    options = export_options_for(final_dir, name=cfg.export.name or Path(cfg.train.output_dir).name,
                                 version=cfg.export.version, source={"train_seconds": f"{seconds:.0f}"})
    # the heads trained with the encoder, when there are any (`mipic export --heads distill` fits new ones)
    has_heads = (final_dir / "heads.npz").is_file()
    manifest = export_with_heads(final_dir, out_dir, options, "checkpoint" if has_heads else None, budget_items=None)
    logger.info("exported %s to %s", manifest.model_id, out_dir)
    return out_dir


def train(
    cfg: TrainConfig, *, sentences: Sequence[str] | None = None, positives: Sequence[str] | None = None
) -> TrainResult:
    """Run ``cfg`` end to end (the shared skeleton of :func:`mipic.training.run.run`) and return where the
    final encoder went.

    Args:
        cfg: the run; saved as ``output_dir/train_config.yaml``, in every checkpoint and in ``final/``.
        sentences: training texts to use instead of ``cfg.data`` (tests, notebooks).
        positives: with ``sentences``, each text's positive (a weak pair, or the text itself).
    """
    set_seed(cfg.seed)  # before building the objective: its heads' init must be reproducible too
    encoder, tokenizer = load_encoder(cfg.model)
    term_log = TermLog()
    if isinstance(cfg.loss, NoObjective):
        # The untrained reference, saved in the same layout as a trained run so evaluation treats it alike.
        out = Path(cfg.train.output_dir)
        save_config(cfg, out / CONFIG_FILE)
        save_encoder_dir(out / FINAL_DIR, encoder, tokenizer, lambda d: save_config(cfg, d / CONFIG_FILE),
                         term_log, None, {})
        onnx_dir = _export(cfg, out / FINAL_DIR, 0.0) if cfg.export.enabled else None
        return TrainResult(out, out / FINAL_DIR, onnx_dir, 0)

    model = build_model(cfg, encoder)
    if sentences is not None:
        texts, pos = list(sentences), (list(positives) if positives is not None else None)
    else:
        texts, pos = load_training_examples(cfg)
    pairs = "sentences" if pos is None else f"{sum(a != b for a, b in zip(texts, pos, strict=True))} pairs"
    keys = None
    if model.teacher is not None and cfg.distill.cache_teacher:
        distinct, text_key, pos_key = text_keys(texts, pos)
        keys = (text_key, pos_key)
        model.teacher_table = TeacherTable.load_or_build(Path(cfg.train.output_dir) / TABLE_FILE, model.teacher,
                                                         tokenizer, distinct, cfg.data.max_length,
                                                         device=_teacher_device())

    def build_trainer() -> MipicTrainer:
        return MipicTrainer(
            model=model,
            args=training_arguments(cfg),
            train_dataset=build_dataset(texts, tokenizer, cfg.data.max_length, pos, keys=keys),
            data_collator=SentenceCollator(tokenizer, cfg.data.max_length),
            processing_class=tokenizer,
            callbacks=[RunFilesCallback(cfg, term_log)],
            term_log=term_log,
            head_lr=cfg.train.head_lr,
        )

    def save_final(state: TrainerState, final_dir: Path, metrics: dict[str, float]) -> None:
        _save_final(final_dir, model, tokenizer, cfg, term_log, state, metrics)

    result = run(RunSpec(
        config=cfg, seed=cfg.seed, train=cfg.train, config_file=CONFIG_FILE,
        save_config=lambda d: save_config(cfg, d / CONFIG_FILE), load_config=lambda p: load_config(p),
        build_trainer=build_trainer, n_examples=len(texts), save_final=save_final,
        on_resume=term_log.restore,
        describe=f"objective {cfg.objective} ({pairs}; trainable parameters {describe_parameters(model)})",
    ))
    if cfg.export.enabled and result.final_dir.is_dir() and result.main_process:
        result.onnx_dir = _export(cfg, result.final_dir, result.metrics.get("wall_seconds", 0))
    return result


def _save_final(
    final_dir: Path,
    model: SimCSEModel,
    tokenizer: PreTrainedTokenizerBase,
    cfg: TrainConfig,
    term_log: TermLog,
    state: TrainerState | None,
    metrics: dict[str, float],
) -> None:
    """``final/``: the encoder (adapters merged), the LoRA adapter alone in ``final/adapter/`` (small enough
    to ship), and the jointly trained exit heads as ``heads.npz``."""
    from peft import PeftModel

    from mipic.modeldir.heads import HEADS_FILE, save_heads

    encoder = model.encoder
    if isinstance(encoder, PeftModel):
        encoder.save_pretrained(str(final_dir / ADAPTER_DIR))  # adapter_model.safetensors + adapter_config.json
    if model.heads is not None:
        final_dir.mkdir(parents=True, exist_ok=True)
        save_heads(final_dir / HEADS_FILE, model.heads.export())
    save_encoder_dir(final_dir, merged_encoder(encoder), tokenizer, lambda d: save_config(cfg, d / CONFIG_FILE),
                     term_log, state, metrics)
