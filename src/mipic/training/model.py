"""The trainable module: a Hugging Face encoder plus the objective, run as unsupervised SimCSE.

Why one wrapper ``nn.Module`` instead of the loss living in the trainer: the losses own parameters
(SIA projections, PIC projectors) and buffers (MIPIC term scales). As submodules of the model handed
to ``transformers.Trainer`` they are optimised, checkpointed, restored on resume and wrapped by
DDP together with the encoder, with no special casing.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from transformers import AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from mipic.training.config import LossSection, ModelSection, Objective
from mipic.training.losses import (
    AdaptiveLayerMatryoshkaLoss,
    EncoderOutputs,
    InfoNCELoss,
    LossOutput,
    MatryoshkaInfoNCELoss,
    MIPICLoss,
)

logger = logging.getLogger(__name__)

DEFAULT_DIMS = (16, 32, 64, 128, 256)
#: Prefix of the objective's parameters in the wrapper's state dict (the encoder's is ``encoder.``).
OBJECTIVE_PREFIX = "objective."
ENCODER_PREFIX = "encoder."


def default_dims(hidden_size: int) -> list[int]:
    """The usual Matryoshka prefixes below ``hidden_size`` plus the full width (as the exporter serves)."""
    return sorted({d for d in DEFAULT_DIMS if d < hidden_size} | {hidden_size})


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


def build_objective(objective: Objective, cfg: LossSection, hidden_size: int, num_layers: int) -> nn.Module:
    """The loss module for ``objective``: ``forward(view_a, view_b) -> LossOutput``.

    The loss constructors validate their arguments (with the messages their tests pin); this only
    fills the defaults that depend on the model (dims, layers).
    """
    dims = cfg.dims or default_dims(hidden_size)
    if objective == "infonce":
        return InfoNCEObjective(cfg.temperature, cfg.symmetric)
    if objective == "mrl":
        return MRLObjective(
            MatryoshkaInfoNCELoss(dims, weights=cfg.weights, temperature=cfg.temperature, symmetric=cfg.symmetric)
        )
    if objective == "adaptive_layer":
        return AdaptiveLayerObjective(
            AdaptiveLayerMatryoshkaLoss(
                dims,
                cfg.layers or list(range(1, num_layers + 1)),
                weights=cfg.weights,
                layer_weighting=cfg.layer_weighting,
                temperature=cfg.temperature,
                kl_weight=cfg.kl_weight,
                kl_temperature=cfg.kl_temperature,
                symmetric=cfg.symmetric,
            )
        )
    if objective == "mipic":
        return MIPICLoss(
            hidden_size,
            dims,
            cfg.chain,
            cfg.sia_layers,
            alpha=cfg.alpha,
            w_sia=cfg.w_sia,
            w_pic=cfg.w_pic,
            w_scr=cfg.w_scr,
            w_sir=cfg.w_sir,
            temperature=cfg.temperature,
            mrl_weights=cfg.weights,
            sia_dims=cfg.sia_dims,
            sia_attn_weight=cfg.sia_attn_weight,
            sia_cka_weight=cfg.sia_cka_weight,
            sia_attn_temperature=cfg.sia_attn_temperature,
            sia_k_min=cfg.sia_k_min,
            sia_gamma=cfg.sia_gamma,
            sia_kl_direction=cfg.sia_kl_direction,
            sia_include_cls=cfg.sia_include_cls,
            pic_projector_hidden=cfg.pic_projector_hidden,
            pic_progressive=cfg.pic_progressive,
            pic_cross_view=cfg.pic_cross_view,
            mic_dims=cfg.mic_dims,
            sir_t=cfg.sir_t,
            normalize_terms=cfg.normalize_terms,
            ema_decay=cfg.ema_decay,
        )
    raise ValueError(f"objective {objective!r} has no loss (expected infonce, mrl, adaptive_layer or mipic)")


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
    return sorted(budgets, key=lambda b: (b[1], b[0]))


# --------------------------------------------------------------------------- wrapper


class SimCSEModel(nn.Module):
    """Encoder + objective; ``forward`` returns ``{"loss": Tensor, "terms": dict[str, float]}``.

    Unsupervised SimCSE: the batch is encoded twice with dropout on, and row i of the two passes is a
    positive pair. Both views go through the encoder as one batch of 2B rows (as the SimCSE reference
    code does): each row still gets its own dropout mask, and one big pass is faster than two small ones.
    """

    def __init__(self, encoder: PreTrainedModel, objective: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.objective = objective

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None = None
    ) -> dict[str, Any]:
        batch = input_ids.shape[0]
        kwargs: dict[str, Tensor] = {
            "input_ids": torch.cat([input_ids, input_ids]),  # (2B, T)
            "attention_mask": torch.cat([attention_mask, attention_mask]),  # (2B, T)
        }
        if token_type_ids is not None:
            kwargs["token_type_ids"] = torch.cat([token_type_ids, token_type_ids])
        out = self.encoder(**kwargs, output_hidden_states=True)
        hidden = out.hidden_states  # L + 1 × (2B, T, H)
        view_a = EncoderOutputs(tuple(h[:batch] for h in hidden), attention_mask)
        view_b = EncoderOutputs(tuple(h[batch:] for h in hidden), attention_mask)
        result: LossOutput = self.objective(view_a, view_b)
        return {"loss": result.loss, "terms": result.terms}

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


def describe_parameters(model: nn.Module, names: Sequence[str] = ("encoder", "objective")) -> dict[str, int]:
    """Trainable parameter counts per top-level child, for the run log."""
    return {
        name: sum(p.numel() for p in getattr(model, name).parameters() if p.requires_grad)
        for name in names
        if hasattr(model, name)
    }
