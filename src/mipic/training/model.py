"""The trainable module: a Hugging Face encoder plus the objective, run as unsupervised SimCSE.

Why one wrapper ``nn.Module`` instead of the loss living in the trainer: the losses own parameters
(SIA projections, PIC projectors) and buffers (MIPIC term scales). As submodules of the model handed
to ``transformers.Trainer`` they are optimised, checkpointed, restored on resume and wrapped by
DDP together with the encoder, with no special casing.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from transformers import AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from mipic.modeldir.heads import ExitHeads
from mipic.modeldir.manifest import default_dims
from mipic.training.config import LoraSection, LossSection, ModelSection, Objective
from mipic.training.default_assets import DEFAULT_HEADS_ASSET
from mipic.training.exit_heads import ExitHeadsModule
from mipic.training.losses import (
    AdaptiveLayerMatryoshkaLoss,
    EncoderOutputs,
    InfoNCELoss,
    LossOutput,
    MatryoshkaInfoNCELoss,
    MIPICLoss,
    SelfDistillLoss,
    mean_pool,
)

logger = logging.getLogger(__name__)

#: Prefix of the objective's parameters in the wrapper's state dict (the encoder's is ``encoder.``).
OBJECTIVE_PREFIX = "objective."
ENCODER_PREFIX = "encoder."


# --------------------------------------------------------------------------- objectives


class InfoNCEObjective(nn.Module):
    """Plain SimCSE: InfoNCE on the last layer's full-width mean-pooled embedding."""

    def __init__(self, temperature: float, symmetric: bool) -> None:
        super().__init__()
        self.loss = InfoNCELoss(temperature=temperature, symmetric=symmetric)

    def forward(self, view_a: EncoderOutputs, view_b: EncoderOutputs) -> LossOutput:
        last = view_a.num_layers
        value = self.loss(view_a.pooled(last), view_b.pooled(last))
        v = float(value.detach())
        return LossOutput(loss=value, terms={"infonce": v, "total": v})


class MRLObjective(nn.Module):
    """Matryoshka InfoNCE on the last layer, logging the InfoNCE of every dim."""

    def __init__(self, loss: MatryoshkaInfoNCELoss) -> None:
        super().__init__()
        self.loss = loss

    def forward(self, view_a: EncoderOutputs, view_b: EncoderOutputs) -> LossOutput:
        last = view_a.num_layers
        per_dim = self.loss.per_dim(view_a.pooled(last), view_b.pooled(last))
        total = per_dim[0] * self.loss.weights[0]
        for w, value in zip(self.loss.weights[1:], per_dim[1:], strict=True):
            total = total + w * value
        logged = [*per_dim, total]
        values = torch.stack([v.detach().float() for v in logged]).tolist()  # one host sync
        names = [f"mrl_d{d}" for d in self.loss.dims] + ["total"]
        return LossOutput(loss=total, terms=dict(zip(names, values, strict=True)))


class AdaptiveLayerObjective(nn.Module):
    """2D Matryoshka over the layers in ``loss.layers``."""

    def __init__(self, loss: AdaptiveLayerMatryoshkaLoss) -> None:
        super().__init__()
        self.loss = loss

    def forward(self, view_a: EncoderOutputs, view_b: EncoderOutputs) -> LossOutput:
        value = self.loss(view_a.pooled_all(), view_b.pooled_all())
        v = float(value.detach())
        return LossOutput(loss=value, terms={"adaptive_layer": v, "total": v})


def build_objective(
    objective: Objective, cfg: LossSection, hidden_size: int, num_layers: int
) -> nn.Module | None:
    """The loss module for ``objective``: ``forward(view_a, view_b) -> LossOutput`` (``None`` for
    ``distill``, which trains by self-distillation alone).

    The loss constructors validate their arguments (with the messages their tests pin); this only
    fills the defaults that depend on the model (dims, layers).
    """
    dims = cfg.dims or default_dims(hidden_size)
    if objective == "distill":
        if cfg.distill_weight <= 0:
            raise ValueError("objective 'distill' needs loss.distill_weight > 0")
        return None
    if objective == "infonce":
        return InfoNCEObjective(cfg.temperature, cfg.symmetric)
    if objective == "mrl":
        return MRLObjective(MatryoshkaInfoNCELoss(dims, **_by_name(MatryoshkaInfoNCELoss, cfg, skip={"dims"})))
    if objective == "adaptive_layer":
        layers = cfg.layers or list(range(1, num_layers + 1))
        return AdaptiveLayerObjective(AdaptiveLayerMatryoshkaLoss(
            dims, layers, **_by_name(AdaptiveLayerMatryoshkaLoss, cfg, skip={"dims", "layers"})))
    if objective == "mipic":
        return MIPICLoss(hidden_size, dims, cfg.chain, cfg.sia_layers, mrl_weights=cfg.weights,
                         **_by_name(MIPICLoss, cfg, skip={"hidden_size", "dims", "chain", "sia_layers", "mrl_weights"}))
    raise ValueError(f"objective {objective!r} has no loss (expected infonce, mrl, adaptive_layer or mipic)")


def _by_name(loss: Callable[..., Any], cfg: LossSection, skip: set[str]) -> dict[str, Any]:
    """Every constructor argument of ``loss`` that the config section has, under the same name: a
    hyperparameter is spelled in the constructor (with its default) and in the config, never mapped by hand."""
    params = inspect.signature(loss).parameters
    missing = [n for n in params if n not in skip and n != "self" and n not in LossSection.model_fields]
    if missing:
        raise TypeError(f"{getattr(loss, '__name__', loss)} takes {missing}, which the loss config lacks")
    return {n: getattr(cfg, n) for n in params if n not in skip and n != "self"}


def trained_budgets(objective: Objective, cfg: LossSection, hidden_size: int, num_layers: int) -> list[tuple[int, int]]:
    """The (dim, layer) budgets an objective trains directly, sorted by (layer, dim), for the manifest."""
    dims = cfg.dims or default_dims(hidden_size)
    budgets: set[tuple[int, int]] = set()
    if objective == "infonce":
        budgets.add((hidden_size, num_layers))
    elif objective == "mrl":
        budgets.update((d, num_layers) for d in dims)
    elif objective == "adaptive_layer":
        layers = cfg.layers or range(1, num_layers + 1)
        budgets.update((d, layer) for layer in layers for d in dims)
    elif objective == "mipic":
        # MRL trains every dim at the last layer; PIC trains each chain checkpoint.
        budgets.update((d, num_layers) for d in dims)
        budgets.update((d, layer) for d, layer in cfg.chain or ())
    if objective != "none":
        budgets.update(distill_budgets(cfg, hidden_size, num_layers))
    return sorted(budgets, key=lambda b: (b[1], b[0]))


def distill_budgets(cfg: LossSection, hidden_size: int, num_layers: int) -> list[tuple[int, int]]:
    """Every (dim, layer) the self-distillation term trains (none when it is off)."""
    if cfg.distill_weight <= 0:
        return []
    dims = cfg.distill_dims or cfg.dims or default_dims(hidden_size)
    layers = cfg.distill_layers or list(range(1, num_layers + 1))
    return [(int(d), int(layer)) for layer in layers for d in dims]


def build_model(
    cfg_objective: Objective, loss: LossSection, model_cfg: ModelSection, encoder: PreTrainedModel
) -> SimCSEModel:
    """Encoder (LoRA-wrapped if configured) + objective + exit heads + frozen teacher, from the config."""
    import copy

    hidden, num_layers = encoder_shape(encoder)
    distill = None
    teacher = None
    if loss.distill_weight > 0:
        # the teacher is the base encoder as loaded, copied before any adapter touches it: it cannot drift
        teacher = copy.deepcopy(encoder)
        distill = SelfDistillLoss([(d, ly) for d, ly in distill_budgets(loss, hidden, num_layers)],
                                  temperature=loss.distill_temperature, anchor_weight=loss.anchor_weight,
                                  align_weight=loss.align_weight,
                                  align_dim_weighting=loss.align_dim_weighting)
    heads = None
    if model_cfg.heads_init is not None:
        heads = ExitHeadsModule(load_heads_init(model_cfg.heads_init, num_layers, hidden),
                                last="orthogonal" if model_cfg.train_last_head else "fixed")
    objective = build_objective(cfg_objective, loss, hidden, num_layers)
    if model_cfg.lora.enabled:
        encoder = wrap_lora(encoder, model_cfg.lora)
    return SimCSEModel(encoder, objective, heads=heads, teacher=teacher, distill=distill,
                       distill_weight=loss.distill_weight if loss.distill_weight > 0 else 1.0)


def wrap_lora(encoder: PreTrainedModel, cfg: LoraSection) -> PreTrainedModel:
    """PEFT LoRA adapters on ``cfg.target_modules``; only the adapters are trainable."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                        target_modules=list(cfg.target_modules), bias="none")
    wrapped: PreTrainedModel = get_peft_model(encoder, config)  # type: ignore[assignment]
    return wrapped


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
    """

    def __init__(
        self,
        encoder: PreTrainedModel,
        objective: nn.Module | None,
        *,
        heads: ExitHeadsModule | None = None,
        teacher: PreTrainedModel | None = None,
        distill: SelfDistillLoss | None = None,
        distill_weight: float = 1.0,
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
        self.distill_weight = distill_weight
        self._teacher: tuple[PreTrainedModel, ...] = ()
        if teacher is not None:
            teacher.eval().requires_grad_(False)
            self._teacher = (teacher,)

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
    ) -> dict[str, Any]:
        batch = input_ids.shape[0]
        readout = self.heads
        if pos_input_ids is None:
            tt = torch.cat([token_type_ids, token_type_ids]) if token_type_ids is not None else None
            hidden = self._encode(torch.cat([input_ids, input_ids]), torch.cat([attention_mask, attention_mask]), tt)
            view_a = EncoderOutputs(tuple(h[:batch] for h in hidden), attention_mask, readout)  # L + 1 × (B, T, H)
            view_b = EncoderOutputs(tuple(h[batch:] for h in hidden), attention_mask, readout)
            pos_input_ids, pos_attention_mask, pos_token_type_ids = input_ids, attention_mask, token_type_ids
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
                t_a = teacher(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
                t_b = teacher(input_ids=pos_input_ids, attention_mask=pos_attention_mask).last_hidden_state
                target = torch.cat([mean_pool(t_a, attention_mask), mean_pool(t_b, pos_attention_mask)])  # (2B, H)
                if readout is not None:
                    # the teacher in the student's last-layer coordinates: the KL does not care (the last head
                    # is a rotation), the text-by-text anchor and align terms do
                    target = readout(view_a.num_layers, target)
            readouts = [torch.cat([view_a.pooled(ly), view_b.pooled(ly)]) for ly in range(1, view_a.num_layers + 1)]
            value = self.distill(readouts, target)
            total = total + self.distill_weight * value
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
