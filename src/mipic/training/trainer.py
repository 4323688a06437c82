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
import time
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
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

from mipic.training.config import CONFIG_FILE, TrainConfig, load_config, save_config
from mipic.training.model import (
    OBJECTIVE_PREFIX,
    SimCSEModel,
    build_objective,
    describe_parameters,
    encoder_shape,
    load_encoder,
    resolve_base,
    trained_budgets,
)

logger = logging.getLogger(__name__)

LOG_FILE = "training_log.json"
TEXT_COLUMN = "text"
LENGTH_COLUMN = "length"
FINAL_DIR = "final"
ONNX_DIR = "onnx"


# --------------------------------------------------------------------------- data


class SentenceCollator:
    """``[{"text": str}, ...]`` → padded ``input_ids`` / ``attention_mask`` (/ ``token_type_ids``) tensors.

    Pads to the longest sentence of the batch, not to ``max_length``: on CPU, padding is wasted compute.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, max_length: int) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, Tensor]:
        texts = [str(f[TEXT_COLUMN]) for f in features]
        return dict(
            self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        )


def build_dataset(texts: Sequence[str], tokenizer: PreTrainedTokenizerBase, max_length: int) -> Dataset:
    """``text`` plus its token count ``length`` (read by the Trainer's length-grouped sampler)."""
    ids = tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
    return Dataset.from_dict({TEXT_COLUMN: list(texts), LENGTH_COLUMN: [len(x) for x in ids]})


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
                    if p.requires_grad and n.startswith(OBJECTIVE_PREFIX) == is_head and (n in decay) == is_decay
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


@dataclass
class TrainResult:
    """Where a run's outputs went, and how fast it ran."""

    output_dir: Path
    final_dir: Path
    onnx_dir: Path | None
    global_step: int
    metrics: dict[str, float] = field(default_factory=dict)


def training_arguments(cfg: TrainConfig) -> TrainingArguments:
    t = cfg.train
    return TrainingArguments(
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
        report_to="none",
        disable_tqdm=t.disable_tqdm,
    )


def _resume_checkpoint(cfg: TrainConfig) -> Path | None:
    resume = cfg.train.resume
    if resume is None or resume is False:
        return None
    if resume is True:
        out = Path(cfg.train.output_dir)
        last = get_last_checkpoint(str(out)) if out.is_dir() else None
        if last is None:
            logger.info("resume requested but %s has no checkpoint: starting from scratch", out)
            return None
        return Path(last)
    path = Path(resume)
    if not path.is_dir():
        raise ValueError(f"train.resume: {path} is not a checkpoint directory")
    return path


def _export(cfg: TrainConfig, final_dir: Path, hidden: int, num_layers: int, seconds: float) -> Path:
    from mipic.training.export import ExportOptions, export_pretrained

    out_dir = Path(cfg.train.output_dir) / ONNX_DIR
    budgets = (
        [tuple(b) for b in cfg.export.trained_budgets]
        if cfg.export.trained_budgets is not None
        else trained_budgets(cfg.objective, cfg.loss, hidden, num_layers)
    )
    if cfg.export.dims:
        served = set(cfg.export.dims) | {hidden}
        dropped = [b for b in budgets if b[0] not in served]
        if dropped:
            logger.warning("trained budgets %s are not in export.dims: left out of the manifest", dropped)
        budgets = [b for b in budgets if b[0] in served]
    options = ExportOptions(
        name=cfg.export.name or Path(cfg.train.output_dir).name,
        version=cfg.export.version,
        dims=cfg.export.dims,
        trained_budgets=[(int(d), int(layer)) for d, layer in budgets],
        max_seq_length=cfg.export.max_seq_length,
        source={
            "base_model": str(resolve_base(cfg.model)),
            "init": str(cfg.model.init or ""),
            "objective": cfg.objective,
            "training": f"{cfg.train.max_steps} steps × {cfg.train.batch_size} sentences, seed {cfg.seed}",
            "train_seconds": f"{seconds:.0f}",
        },
    )
    manifest = export_pretrained(final_dir, out_dir, options)
    logger.info("exported %s to %s", manifest.model_id, out_dir)
    return out_dir


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _warn_if_config_changed(cfg: TrainConfig, checkpoint: Path) -> None:
    """Resuming under a different config is allowed (e.g. more steps) but should not go unnoticed."""
    path = checkpoint / CONFIG_FILE
    if not path.is_file():
        return
    before, now = _flatten(load_config(path).to_dict()), _flatten(cfg.to_dict())
    ignored = {"train.resume", "train.output_dir"}  # where the run lives and how it was restarted may differ
    changed = sorted(k for k in before.keys() | now.keys() if k not in ignored and before.get(k) != now.get(k))
    if changed:
        logger.warning("resuming %s with a changed config: %s", checkpoint, ", ".join(changed))


def train(cfg: TrainConfig, *, sentences: Sequence[str] | None = None) -> TrainResult:
    """Run ``cfg`` end to end and return where the final encoder went.

    Args:
        cfg: the run; saved as ``output_dir/train_config.yaml``, in every checkpoint and in ``final/``.
        sentences: training texts to use instead of ``cfg.data`` (tests, notebooks).
    """
    set_seed(cfg.seed)  # before building the objective: its heads' init must be reproducible too
    out = Path(cfg.train.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / CONFIG_FILE)
    final_dir = out / FINAL_DIR
    encoder, tokenizer = load_encoder(cfg.model)
    hidden, num_layers = encoder_shape(encoder)
    term_log = TermLog()

    if cfg.objective == "none":
        # The untrained reference, saved in the same layout as a trained run so evaluation treats it alike.
        _save_final(final_dir, encoder, tokenizer, cfg, term_log, None, {})
        onnx_dir = _export(cfg, final_dir, hidden, num_layers, 0.0) if cfg.export.enabled else None
        return TrainResult(out, final_dir, onnx_dir, 0)

    objective = build_objective(cfg.objective, cfg.loss, hidden, num_layers)
    model = SimCSEModel(encoder, objective)
    texts = list(sentences) if sentences is not None else load_training_sentences(cfg)
    needed = cfg.train.batch_size * cfg.train.grad_accum
    if len(texts) < needed:
        raise ValueError(f"{len(texts)} training sentences, fewer than one step needs ({needed})")
    logger.info(
        "objective %s: %d sentences (%.2f epochs in %d steps), parameters %s",
        cfg.objective,
        len(texts),
        cfg.train.max_steps * needed / len(texts),
        cfg.train.max_steps,
        describe_parameters(model),
    )

    trainer = MipicTrainer(
        model=model,
        args=training_arguments(cfg),
        train_dataset=build_dataset(texts, tokenizer, cfg.data.max_length),
        data_collator=SentenceCollator(tokenizer, cfg.data.max_length),
        processing_class=tokenizer,
        callbacks=[RunFilesCallback(cfg, term_log)],
        term_log=term_log,
        head_lr=cfg.train.head_lr,
    )
    if trainer.args.n_gpu > 1:
        # Several GPUs in one process means nn.DataParallel: it would split each batch (and its in-batch
        # negatives) across devices and cannot gather the per-term floats. DDP has neither problem.
        raise RuntimeError(
            f"{trainer.args.n_gpu} GPUs visible to one process: launch with torchrun or accelerate launch "
            "(one process per GPU), or restrict CUDA_VISIBLE_DEVICES to one GPU"
        )
    resume = _resume_checkpoint(cfg)
    if resume is not None:
        _warn_if_config_changed(cfg, resume)
        term_log.restore(resume)
        logger.info("resuming from %s", resume)
    start = time.perf_counter()
    output = trainer.train(resume_from_checkpoint=str(resume) if resume is not None else None)
    seconds = time.perf_counter() - start
    metrics = {k: float(v) for k, v in output.metrics.items() if isinstance(v, int | float)}
    metrics["wall_seconds"] = seconds
    if trainer.is_world_process_zero():
        _save_final(final_dir, model.encoder, tokenizer, cfg, term_log, trainer.state, metrics)
    onnx_dir = None
    if cfg.export.enabled and trainer.is_world_process_zero():
        onnx_dir = _export(cfg, final_dir, hidden, num_layers, seconds)
    logger.info("final encoder in %s after %d steps (%.1f s)", final_dir, trainer.state.global_step, seconds)
    return TrainResult(out, final_dir, onnx_dir, trainer.state.global_step, metrics)


def _save_final(
    final_dir: Path,
    encoder: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    cfg: TrainConfig,
    term_log: TermLog,
    state: TrainerState | None,
    metrics: dict[str, float],
) -> None:
    """``final/``: a plain Hugging Face encoder dir (what eval and export load) plus the run's files."""
    final_dir.mkdir(parents=True, exist_ok=True)
    encoder.save_pretrained(final_dir, safe_serialization=True)  # type: ignore[operator]
    tokenizer.save_pretrained(final_dir)
    save_config(cfg, final_dir / CONFIG_FILE)
    clean = {k: v for k, v in metrics.items() if math.isfinite(v)}
    write_training_log(final_dir, term_log, state, {"metrics": clean})
