"""The trainable module: a Hugging Face encoder plus the objective, run as unsupervised SimCSE.

Why one wrapper ``nn.Module`` instead of the loss living in the trainer: the losses own parameters
(SIA projections, PIC projectors) and buffers (MIPIC term scales). As submodules of the model handed
to ``transformers.Trainer`` they are optimised, checkpointed, restored on resume and wrapped by
DDP together with the encoder, with no special casing.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from transformers import AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from mipic.modeldir.heads import ExitHeads
from mipic.training.config import LoraSection, ModelSection, TrainConfig
from mipic.training.default_assets import ADAPTER_FILES, ASSETS_DIR, DEFAULT_ADAPTER_DIR, DEFAULT_HEADS_ASSET
from mipic.training.exit_heads import ExitHeadsModule
from mipic.training.losses import EncoderOutputs, LossOutput, SelfDistillLoss, mean_pool
from mipic.training.objectives import build_distill, build_objective
from mipic.training.teacher import TeacherTable

logger = logging.getLogger(__name__)

#: Prefix of the objective's parameters in the wrapper's state dict (the encoder's is ``encoder.``).
OBJECTIVE_PREFIX = "objective."
ENCODER_PREFIX = "encoder."


# --------------------------------------------------------------------------- building


def build_model(cfg: TrainConfig, encoder: PreTrainedModel) -> SimCSEModel:
    """Encoder (LoRA-wrapped if configured) + objective + exit heads + frozen teacher, from the config.

    Built in a fixed order (teacher, heads, objective, adapters): each draws its random initial weights in turn,
    so a seed gives the same run.
    """
    hidden, num_layers = encoder_shape(encoder)
    distill = build_distill(cfg.distill, cfg.loss, hidden, num_layers)
    # the teacher is the base encoder as loaded, copied before any adapter touches it: it cannot drift
    teacher = copy.deepcopy(encoder) if distill is not None else None
    heads = None
    if cfg.model.heads_init is not None:
        heads = ExitHeadsModule(load_heads_init(cfg.model.heads_init, num_layers, hidden),
                                last="orthogonal" if cfg.model.train_last_head else "fixed")
    objective = build_objective(cfg.loss, hidden, num_layers)
    if cfg.model.lora.enabled:
        encoder = wrap_lora(encoder, cfg.model.lora)
    return SimCSEModel(encoder, objective, heads=heads, teacher=teacher, distill=distill)


def wrap_lora(encoder: PreTrainedModel, cfg: LoraSection) -> PreTrainedModel:
    """PEFT LoRA adapters on ``cfg.target_modules``; only the adapters are trainable.

    They start at zero (B = 0), or, with ``cfg.init``, from a saved adapter of the same shape (a continuation).
    """
    from peft import LoraConfig, PeftModel, get_peft_model

    if cfg.init is None:
        config = LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                            target_modules=list(cfg.target_modules), bias="none")
        wrapped: PreTrainedModel = get_peft_model(encoder, config)  # type: ignore[assignment]
        return wrapped
    path = adapter_init_path(cfg.init)
    if not (path / ADAPTER_FILES[1]).is_file():
        raise ValueError(f"model.lora.init: no {ADAPTER_FILES[1]} in {path}")
    saved = LoraConfig.from_pretrained(str(path))
    if (saved.r, saved.lora_alpha, sorted(saved.target_modules or [])) != (cfg.r, cfg.alpha,
                                                                           sorted(cfg.target_modules)):
        raise ValueError(
            f"model.lora.init: the adapter at {path} has r={saved.r}, alpha={saved.lora_alpha}, target modules "
            f"{sorted(saved.target_modules or [])}; the config asks for r={cfg.r}, alpha={cfg.alpha}, "
            f"{sorted(cfg.target_modules)}")
    continued: PreTrainedModel = PeftModel.from_pretrained(  # type: ignore[assignment]
        encoder, str(path), is_trainable=True)
    return continued


def adapter_init_path(spec: Path | str) -> Path:
    """The adapter directory ``model.lora.init`` names: 'default' (the default model's committed adapter) or
    the directory itself (not checked here: an export reads it after the run, when it may be gone)."""
    return ASSETS_DIR / DEFAULT_ADAPTER_DIR if str(spec) == "default" else Path(spec)


def merged_encoder(encoder: nn.Module) -> nn.Module:
    """The plain encoder to save and export: a LoRA-wrapped one has its adapters merged into the weights."""
    from peft import PeftModel

    if isinstance(encoder, PeftModel):
        merged: nn.Module = encoder.merge_and_unload()
        return merged
    return encoder


# --------------------------------------------------------------------------- exit heads


def heads_init_path(spec: Path | str) -> Path:
    """The heads file ``model.heads_init`` names: 'default' (the committed heads of the default model), a
    model directory with ``heads.npz``, or the file itself."""
    from mipic.modeldir.heads import HEADS_FILE

    if str(spec) == "default":
        return DEFAULT_HEADS_ASSET
    path = Path(spec)
    return path / HEADS_FILE if path.is_dir() else path


def load_heads_init(spec: Path | str, num_layers: int, hidden_size: int) -> ExitHeads:
    """The exit heads training starts from (``model.heads_init``, see :func:`heads_init_path`)."""
    from mipic.modeldir.heads import load_heads

    return load_heads(heads_init_path(spec), num_layers, hidden_size)


# --------------------------------------------------------------------------- wrapper


class SimCSEModel(nn.Module):
    """Encoder + objective (+ exit heads, + a frozen teacher); ``forward`` returns
    ``{"loss": Tensor, "terms": dict[str, float]}``.

    Without positives (``pos_input_ids``) this is unsupervised SimCSE: the batch is encoded twice with
    dropout on and row i of the two passes is a positive pair; both views go through the encoder as one
    batch of 2B rows (as the SimCSE reference code does). With positives (weak pairs such as title → lead,
    or a sentence paired with itself), view b is the positives' pass.

    With ``heads`` every loss sees the served read-out (pooled states through the exit heads). With a
    ``distill`` loss, a frozen ``teacher`` (a copy of the base encoder, never trained, not a submodule so it
    is neither optimised nor checkpointed) gives the target similarities of all 2B texts at its last layer.
    With a ``teacher_table`` (set by the trainer: the teacher's vector for every distinct training text,
    computed once; :mod:`mipic.training.teacher`) and the batch's ``text_key`` / ``pos_key``, the step looks
    the targets up instead of running the teacher.
    """

    def __init__(
        self,
        encoder: PreTrainedModel,
        objective: nn.Module | None,
        *,
        heads: ExitHeadsModule | None = None,
        teacher: PreTrainedModel | None = None,
        distill: SelfDistillLoss | None = None,
    ) -> None:
        super().__init__()
        if (teacher is None) != (distill is None):
            raise ValueError("distillation needs both a teacher and a distill loss")
        if objective is None and distill is None:
            raise ValueError("nothing to train: no objective and no distillation")
        self.encoder = encoder
        self.objective = objective
        self.heads = heads
        self.distill = distill
        self._teacher: tuple[PreTrainedModel, ...] = ()
        if teacher is not None:
            teacher.eval().requires_grad_(False)
            self._teacher = (teacher,)
        self.teacher_table: TeacherTable | None = None

    @property
    def teacher(self) -> PreTrainedModel | None:
        return self._teacher[0] if self._teacher else None

    def _encode(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None) -> tuple[Tensor, ...]:
        kwargs: dict[str, Tensor] = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        return tuple(self.encoder(**kwargs, output_hidden_states=True).hidden_states)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        token_type_ids: Tensor | None = None,
        pos_input_ids: Tensor | None = None,
        pos_attention_mask: Tensor | None = None,
        pos_token_type_ids: Tensor | None = None,
        text_key: Tensor | None = None,
        pos_key: Tensor | None = None,
    ) -> dict[str, Any]:
        batch = input_ids.shape[0]
        readout = self.heads
        if pos_input_ids is None:
            tt = torch.cat([token_type_ids, token_type_ids]) if token_type_ids is not None else None
            hidden = self._encode(torch.cat([input_ids, input_ids]), torch.cat([attention_mask, attention_mask]), tt)
            view_a = EncoderOutputs(tuple(h[:batch] for h in hidden), attention_mask, readout)  # L + 1 × (B, T, H)
            view_b = EncoderOutputs(tuple(h[batch:] for h in hidden), attention_mask, readout)
            pos_input_ids, pos_attention_mask, pos_token_type_ids = input_ids, attention_mask, token_type_ids
            pos_key = text_key
        else:
            if pos_attention_mask is None:
                raise ValueError("pos_input_ids needs pos_attention_mask")
            view_a = EncoderOutputs(self._encode(input_ids, attention_mask, token_type_ids), attention_mask, readout)
            view_b = EncoderOutputs(self._encode(pos_input_ids, pos_attention_mask, pos_token_type_ids),
                                    pos_attention_mask, readout)
        total = torch.zeros((), device=input_ids.device)
        terms: dict[str, float] = {}
        if self.objective is not None:
            result: LossOutput = self.objective(view_a, view_b)
            total = total + result.loss
            terms.update({k: v for k, v in result.terms.items() if k != "total"})
        teacher = self.teacher
        if self.distill is not None and teacher is not None:
            if next(teacher.parameters()).device != input_ids.device:
                nn.Module.to(teacher, input_ids.device)
            assert pos_attention_mask is not None
            with torch.no_grad():
                table = self.teacher_table
                if table is not None and text_key is not None and pos_key is not None:
                    target = torch.cat([table.lookup(text_key), table.lookup(pos_key)])  # (2B, H)
                else:
                    t_a = teacher(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
                    t_b = teacher(input_ids=pos_input_ids, attention_mask=pos_attention_mask).last_hidden_state
                    target = torch.cat([mean_pool(t_a, attention_mask), mean_pool(t_b, pos_attention_mask)])  # (2B, H)
                if readout is not None:
                    # the teacher in the student's last-layer coordinates: the KL does not care (the last head
                    # is a rotation), the text-by-text anchor and align terms do
                    target = readout(view_a.num_layers, target)
            readouts = [torch.cat([view_a.pooled(ly), view_b.pooled(ly)]) for ly in range(1, view_a.num_layers + 1)]
            total = total + self.distill(readouts, target)  # weighted by the loss's own weight
            terms["distill_kl"] = float(self.distill.last_kl)
            if self.distill.anchor_weight > 0:
                terms["distill_anchor"] = float(self.distill.last_anchor)
            if self.distill.align_weight > 0:
                terms["distill_align"] = float(self.distill.last_align)
        terms["total"] = float(total.detach())
        return {"loss": total, "terms": terms}

    def set_progress(self, fraction: float) -> None:
        """Forward the fraction of training done to objectives with a schedule (progressive PIC)."""
        setter = getattr(self.objective, "set_progress", None)
        if setter is not None:
            setter(min(1.0, max(0.0, fraction)))


# --------------------------------------------------------------------------- loading


def _is_trainer_checkpoint(path: Path) -> bool:
    """A ``checkpoint-N`` dir of our Trainer: wrapper weights (``encoder.*`` keys), no config.json."""
    return (
        (path / "trainer_state.json").is_file()
        and (path / "model.safetensors").is_file()
        and not (path / "config.json").is_file()
    )


def _has_tokenizer(path: Path) -> bool:
    return (path / "tokenizer.json").is_file() or (path / "vocab.txt").is_file()


def resolve_base(cfg: ModelSection) -> Path:
    if cfg.base is not None:
        return Path(cfg.base)
    from mipic.training.export import packaged_minilm_path

    return packaged_minilm_path()


def load_encoder(cfg: ModelSection) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The encoder to train (base architecture, ``init`` weights if given) and its tokenizer."""
    base = resolve_base(cfg)
    overrides: dict[str, Any] = {}
    if cfg.dropout is not None:
        overrides = {"hidden_dropout_prob": cfg.dropout, "attention_probs_dropout_prob": cfg.dropout}
    init = Path(cfg.init) if cfg.init is not None else None
    if init is not None and _is_trainer_checkpoint(init):
        from safetensors.torch import load_file

        encoder = AutoModel.from_pretrained(str(base), **overrides)
        state = load_file(str(init / "model.safetensors"))
        weights = {k[len(ENCODER_PREFIX) :]: v for k, v in state.items() if k.startswith(ENCODER_PREFIX)}
        if not weights:
            raise ValueError(f"{init} holds no encoder.* weights: not a checkpoint of `mipic train`")
        missing, unexpected = encoder.load_state_dict(weights, strict=False)
        # A base loaded with a pooler may lack it in the checkpoint the other way round; nothing else may differ.
        real_missing = [k for k in missing if not k.startswith("pooler.")]
        if real_missing or unexpected:
            raise ValueError(
                f"{init} does not match the base {base}: missing {real_missing[:5]}, unexpected {unexpected[:5]}"
            )
        logger.info("initialised encoder weights from trainer checkpoint %s", init)
    elif init is not None:
        encoder = AutoModel.from_pretrained(str(init), **overrides)
        logger.info("initialised encoder from %s", init)
    else:
        encoder = AutoModel.from_pretrained(str(base), **overrides)
    tokenizer = AutoTokenizer.from_pretrained(str(init if init is not None and _has_tokenizer(init) else base))
    return encoder, tokenizer


def encoder_shape(encoder: PreTrainedModel) -> tuple[int, int]:
    """(hidden_size, num_layers)."""
    return int(encoder.config.hidden_size), int(encoder.config.num_hidden_layers)


def describe_parameters(
    model: nn.Module, names: Sequence[str] = ("encoder", "objective", "heads")
) -> dict[str, int]:
    """Trainable parameter counts per top-level child, for the run log."""
    return {
        name: sum(p.numel() for p in getattr(model, name).parameters() if p.requires_grad)
        for name in names
        if getattr(model, name, None) is not None
    }
