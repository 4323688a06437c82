"""One run skeleton for ``mipic train`` and ``mipic pretrain``: seed, config saved, data checked, the
Trainer built, DDP checked, resume (with a warning when the config changed), train, final directory written
by rank 0 only. Each command supplies only what differs (its model, collator, trainer class and final save).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from transformers import Trainer, TrainerState, set_seed
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import get_last_checkpoint

from mipic.training.config import TrainSection

logger = logging.getLogger(__name__)

FINAL_DIR = "final"


@dataclass
class TrainResult:
    """Where a run's outputs went, and how fast it ran."""

    output_dir: Path
    final_dir: Path
    onnx_dir: Path | None
    global_step: int
    metrics: dict[str, float] = field(default_factory=dict)
    main_process: bool = True
    """False on the other ranks of a torchrun launch: only rank 0 wrote ``final/`` and may export it."""


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        out.update(flatten(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return out


def resume_checkpoint(train: TrainSection) -> Path | None:
    """``train.resume``: true = the latest ``checkpoint-N`` of the output dir (none yet: start afresh); a path."""
    resume = train.resume
    if resume is None or resume is False:
        return None
    if resume is True:
        out = Path(train.output_dir)
        last = get_last_checkpoint(str(out)) if out.is_dir() else None
        if last is None:
            logger.info("resume requested but %s has no checkpoint: starting from scratch", out)
            return None
        return Path(last)
    path = Path(resume)
    if not path.is_dir():
        raise ValueError(f"train.resume: {path} is not a checkpoint directory")
    return path


def warn_if_config_changed(
    config: BaseModel, checkpoint: Path, file_name: str, load: Callable[[Path], BaseModel]
) -> list[str]:
    """Resuming under a different config is allowed (e.g. more steps) but should not go unnoticed."""
    path = checkpoint / file_name
    if not path.is_file():
        return []
    before, now = flatten(load(path).model_dump(mode="json")), flatten(config.model_dump(mode="json"))
    ignored = {"train.resume", "train.output_dir"}  # where the run lives and how it was restarted may differ
    changed = sorted(k for k in before.keys() | now.keys() if k not in ignored and before.get(k) != now.get(k))
    if changed:
        logger.warning("resuming %s with a changed config: %s", checkpoint, ", ".join(changed))
    return changed


def saved_state(checkpoint: Path) -> TrainerState | None:
    """The Trainer state a ``checkpoint-N`` directory was saved with (None when it has none)."""
    path = checkpoint / TRAINER_STATE_NAME
    return TrainerState.load_from_json(str(path)) if path.is_file() else None


@dataclass
class RunSpec:
    """What one kind of run (train, pretrain) brings to :func:`run`."""

    config: BaseModel
    seed: int
    train: TrainSection
    config_file: str
    save_config: Callable[[Path], object]  # write the config into a directory
    load_config: Callable[[Path], BaseModel]
    build_trainer: Callable[[], Trainer]  # called after the seed is set and the config saved
    n_examples: int
    save_final: Callable[[TrainerState, Path, dict[str, float]], None]  # rank 0 only; the run's state
    on_resume: Callable[[Path], None] = lambda checkpoint: None
    describe: str = ""


def run(spec: RunSpec) -> TrainResult:
    """The skeleton every run shares (see the module docstring)."""
    set_seed(spec.seed)  # before building anything random: heads, projectors, the data order
    out = Path(spec.train.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    spec.save_config(out)
    needed = spec.train.batch_size * spec.train.grad_accum
    if spec.n_examples < needed:
        raise ValueError(f"{spec.n_examples} training examples, fewer than one step needs ({needed})")
    trainer = spec.build_trainer()
    if trainer.args.n_gpu > 1:
        # Several GPUs in one process means nn.DataParallel: it would split each batch (and its in-batch
        # negatives) across devices and cannot gather the per-term floats. DDP has neither problem.
        raise RuntimeError(
            f"{trainer.args.n_gpu} GPUs visible to one process: launch with torchrun or accelerate launch "
            "(one process per GPU), or restrict CUDA_VISIBLE_DEVICES to one GPU"
        )
    logger.info("%s: %d examples (%.2f epochs in %d steps), world size %d", spec.describe or "run", spec.n_examples,
                spec.train.max_steps * needed * trainer.args.world_size / spec.n_examples, spec.train.max_steps,
                trainer.args.world_size)
    resume = resume_checkpoint(spec.train)
    if resume is not None:
        warn_if_config_changed(spec.config, resume, spec.config_file, spec.load_config)
        spec.on_resume(resume)
        logger.info("resuming from %s", resume)
    start = time.perf_counter()
    state = saved_state(resume) if resume is not None else None
    if resume is not None and state is not None and state.global_step >= spec.train.max_steps:
        # The Trainer would still take one step past max_steps when resumed at it: a finished run is only
        # loaded, so a rerun of a script (or a retrain resumed after training) writes the same final weights.
        logger.info("%s already reached %d steps: loading it, not training", resume, spec.train.max_steps)
        trainer._load_from_checkpoint(str(resume))
        trainer.state = state
        metrics: dict[str, float] = {}
    else:
        output = trainer.train(resume_from_checkpoint=str(resume) if resume is not None else None)
        metrics = {k: float(v) for k, v in output.metrics.items() if isinstance(v, int | float)}
    seconds = time.perf_counter() - start
    metrics["wall_seconds"] = seconds
    final_dir = out / FINAL_DIR
    main_process = trainer.is_world_process_zero()
    if main_process:  # under DDP the other ranks hold the same weights: write once
        spec.save_final(trainer.state, final_dir, metrics)
    logger.info("final encoder in %s after %d steps (%.1f s)", final_dir, trainer.state.global_step, seconds)
    _end_process_group(trainer)
    return TrainResult(out, final_dir, None, trainer.state.global_step, metrics, main_process)


def _end_process_group(trainer: Trainer) -> None:
    """Under torchrun, wait for rank 0's write, then tear the process group down before exit: a gloo group left
    to the interpreter's exit can abort a rank ("terminate called without an active exception"), failing the
    launch after a good run. A no-op in a single process."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        trainer.accelerator.wait_for_everyone()
        dist.destroy_process_group()
