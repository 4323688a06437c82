"""``mipic pretrain``: continued MLM or MLM + JEPA pretraining of the encoder, on ``transformers.Trainer``.

The output is an encoder that ``mipic train --init`` starts from: ``output_dir/final`` is a plain
Hugging Face encoder dir (``save_pretrained`` + tokenizer, the layout ``mipic train`` writes), and
every ``checkpoint-N`` holds the wrapper's weights under ``encoder.*``, which
:func:`mipic.training.model.load_encoder` also accepts. ``output_dir/final_mlm`` adds the MLM head
(a ``BertForMaskedLM``) for runs that continue pretraining or want fill-mask.

Pieces:

* :class:`SpanMaskingCollator` — tokenize, mask contiguous spans (~15 % of the non-special tokens),
  BERT's 80/10/10 replacement; keeps the clean ids for the target encoder.
* :func:`build_mlm_head` — a fresh ``BertForMaskedLM`` head (``cls``) whose decoder *is* the
  encoder's word-embedding matrix (the packaged all-MiniLM-L6-v2 ships without an MLM head).
* :class:`PretrainModel` — encoder + heads (+ EMA target encoder for ``mlm_jepa``); the loss is
  :class:`mipic.training.losses.mlm_jepa.MLMJEPALoss`.
* :class:`PretrainTrainer` — :class:`mipic.training.trainer.MipicTrainer` (term logging) with a
  three-group optimizer (encoder / heads / balance) and checkpoints that store tied weights once.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import (
    BertForMaskedLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
    set_seed,
)
from transformers.models.bert.modeling_bert import BertOnlyMLMHead

from mipic.training.losses import JEPAPredictor, LatentPredictionLoss, LossBalance, MLMJEPALoss, ema_update
from mipic.training.model import OBJECTIVE_PREFIX, describe_parameters, encoder_shape, load_encoder
from mipic.training.pretrain_config import (
    PRETRAIN_CONFIG_FILE,
    MaskingSection,
    PretrainConfig,
    load_pretrain_config,
    save_pretrain_config,
)
from mipic.training.run import RunSpec, TrainResult, run
from mipic.training.trainer import (
    TEXT_COLUMN,
    MipicTrainer,
    RunFilesCallback,
    TermLog,
    build_dataset,
    load_training_sentences,
    save_encoder_dir,
    training_arguments,
)

logger = logging.getLogger(__name__)

FINAL_MLM_DIR = "final_mlm"
IGNORE_INDEX = -100
#: The MLM decoder's weight is the encoder's word-embedding matrix and its bias is the head's ``bias``:
#: each tensor is stored once, under its owner's name (safetensors refuses aliased tensors).
TIED_KEYS = (
    f"{OBJECTIVE_PREFIX}mlm_head.predictions.decoder.weight",
    f"{OBJECTIVE_PREFIX}mlm_head.predictions.decoder.bias",
)
BALANCE_PREFIX = f"{OBJECTIVE_PREFIX}jepa.balance."
_MAX_SPAN_DRAWS = 100


# --------------------------------------------------------------------------- masking


def span_mask(n: int, budget: int, rng: np.random.Generator, span_p: float = 0.2, max_span: int = 10) -> np.ndarray:
    """(n,) bool with exactly ``min(budget, n)`` True, laid out as contiguous spans.

    Span lengths are drawn from Geometric(``span_p``) clipped to ``max_span`` and to what is left of
    the budget (SpanBERT, Joshi et al. 2020); starts are uniform. Spans may touch or overlap, which
    only merges them. After ``_MAX_SPAN_DRAWS`` draws (never reached at 15 %) single tokens fill the rest.
    """
    chosen = np.zeros(n, dtype=bool)
    budget = min(budget, n)
    count = 0
    for _ in range(_MAX_SPAN_DRAWS):
        if count >= budget:
            break
        length = int(min(rng.geometric(span_p), max_span, budget - count))
        start = int(rng.integers(0, n - length + 1))
        chosen[start : start + length] = True
        count = int(chosen.sum())
    if count < budget:
        free = np.flatnonzero(~chosen)
        chosen[rng.choice(free, budget - count, replace=False)] = True
    return chosen


class SpanMaskingCollator:
    """``[{"text": str}, ...]`` → masked inputs for MLM (+ the clean inputs for the JEPA target).

    Returns ``input_ids`` (corrupted), ``attention_mask`` (, ``token_type_ids``), ``labels`` (the
    original id at masked positions, -100 elsewhere) and ``target_input_ids`` (clean ids).

    * Maskable = real tokens that are not special: [CLS], [SEP], [PAD] (every id in
      ``tokenizer.all_special_ids``) are never masked, replaced or predicted.
    * Each sentence masks ``floor(rate·n + u)`` of its ``n`` maskable tokens, ``u ~ U[0, 1)``: an
      unbiased rounding, so the corpus-level rate is ``rate`` even for short sentences. A batch with
      no masked token at all gets one, so the loss is always defined.
    * Of the masked positions, ``mask_token_prob`` become [MASK], ``random_token_prob`` a random
      non-special token, the rest stay (BERT's 80/10/10); all of them are predicted.

    The masks are a deterministic function of ``seed`` and the batch's texts (a generator seeded with
    both): a resumed run, which the Trainer feeds the same batches, masks them exactly as the
    uninterrupted run did, and no generator state has to be checkpointed.
    """

    def __init__(
        self, tokenizer: PreTrainedTokenizerBase, max_length: int, masking: MaskingSection, seed: int = 0
    ) -> None:
        if tokenizer.mask_token_id is None:
            raise ValueError("the tokenizer has no mask token: MLM needs one")
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.masking = masking
        self.seed = seed
        vocab = len(tokenizer)
        self.special = torch.zeros(vocab, dtype=torch.bool)  # (V,) lookup: is this id special?
        self.special[[i for i in tokenizer.all_special_ids if i is not None and 0 <= i < vocab]] = True
        self.replacement_ids = torch.nonzero(~self.special).flatten()  # ids a random replacement may take
        self.mask_id = int(tokenizer.mask_token_id)

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, Tensor]:
        texts = [str(f[TEXT_COLUMN]) for f in features]
        enc = dict(
            self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        )
        ids: Tensor = enc["input_ids"]  # (B, T)
        rng = self.batch_rng(texts)
        masked = self.choose_positions(ids, enc["attention_mask"], rng)  # (B, T) bool
        corrupted, labels = self.corrupt(ids, masked, rng)
        return {**enc, "input_ids": corrupted, "labels": labels, "target_input_ids": ids}

    def batch_rng(self, texts: Sequence[str]) -> np.random.Generator:
        """The batch's generator: seeded with (seed, CRC-32 of the texts), stable across processes."""
        return np.random.default_rng([self.seed, zlib.crc32("\0".join(texts).encode("utf-8"))])

    def maskable(self, ids: Tensor, attention_mask: Tensor) -> Tensor:
        """(B, T) bool: real, non-special tokens."""
        return attention_mask.bool() & ~self.special[ids]

    def choose_positions(self, ids: Tensor, attention_mask: Tensor, rng: np.random.Generator) -> Tensor:
        m = self.masking
        maskable = self.maskable(ids, attention_mask)
        masked = torch.zeros_like(maskable)
        for row in range(ids.shape[0]):
            cand = torch.nonzero(maskable[row]).flatten()
            n = len(cand)
            if n == 0:
                continue
            budget = math.floor(m.rate * n + rng.random())
            chosen = span_mask(n, budget, rng, m.span_p, m.max_span)
            masked[row, cand[torch.from_numpy(chosen)]] = True
        if not masked.any() and maskable.any():
            flat = torch.nonzero(maskable.flatten()).flatten()
            masked.view(-1)[flat[int(rng.integers(len(flat)))]] = True
        return masked

    def corrupt(self, ids: Tensor, masked: Tensor, rng: np.random.Generator) -> tuple[Tensor, Tensor]:
        """80/10/10 replacement at ``masked``: (corrupted ids, labels)."""
        m = self.masking
        labels = torch.where(masked, ids, torch.full_like(ids, IGNORE_INDEX))
        u = torch.from_numpy(rng.random(tuple(ids.shape)))  # (B, T)
        to_mask = masked & (u < m.mask_token_prob)
        to_random = masked & (u >= m.mask_token_prob) & (u < m.mask_token_prob + m.random_token_prob)
        corrupted = ids.clone()
        corrupted[to_mask] = self.mask_id
        n_random = int(to_random.sum())
        if n_random:
            picks = torch.from_numpy(rng.integers(0, len(self.replacement_ids), n_random))
            corrupted[to_random] = self.replacement_ids[picks]
        return corrupted, labels


# --------------------------------------------------------------------------- model


def build_mlm_head(encoder: PreTrainedModel) -> BertOnlyMLMHead:
    """``BertForMaskedLM``'s head (``cls``), initialised as that class does, decoder tied to the word embeddings.

    Tied means the same ``Parameter`` object: the decoder's weight *is* the encoder's input-embedding
    matrix, so the vocabulary projection starts pretrained and only the transform (dense + LayerNorm)
    and the output bias are new.
    """
    head = BertOnlyMLMHead(encoder.config)
    head.apply(encoder._init_weights)
    tie_mlm_head(head, encoder)
    return head


def tie_mlm_head(head: BertOnlyMLMHead, encoder: PreTrainedModel) -> None:
    embeddings = encoder.get_input_embeddings()
    if not isinstance(embeddings, nn.Embedding):
        raise TypeError(f"the encoder's input embeddings are a {type(embeddings).__name__}, not nn.Embedding")
    head.predictions.decoder.weight = embeddings.weight
    head.predictions.decoder.bias = head.predictions.bias


class PretrainHeads(nn.Module):
    """The trainable parts besides the encoder: the MLM head and (``mlm_jepa``) predictor + balance."""

    def __init__(self, mlm_head: BertOnlyMLMHead, jepa: MLMJEPALoss | None) -> None:
        super().__init__()
        self.mlm_head = mlm_head
        self.jepa = jepa


class PretrainModel(nn.Module):
    """Encoder + heads (+ EMA target); ``forward`` returns ``{"loss": Tensor, "terms": dict[str, float]}``.

    The target encoder (``mlm_jepa`` only) is a deep copy of the encoder at construction. Its
    parameters never require gradients and it stays in eval mode (no dropout: the targets are
    deterministic); :meth:`update_target` — called after every optimizer step — is its only update.
    """

    #: Read by ``Trainer._issue_warnings_after_load``: when exactly these are missing from a checkpoint
    #: (they were not written, see :data:`TIED_KEYS`) it calls :meth:`tie_weights` instead of warning.
    _keys_to_ignore_on_save: ClassVar[list[str]] = list(TIED_KEYS)

    def __init__(
        self,
        encoder: PreTrainedModel,
        heads: PretrainHeads,
        *,
        target_layers: int = 1,
        ema_decay: float = 0.99,
        ema_decay_end: float = 0.999,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.objective = heads
        self.target_layers = target_layers
        self.ema_decay = ema_decay
        self.ema_decay_end = ema_decay_end
        self.current_decay = ema_decay
        self.target_encoder: nn.Module | None = None
        if heads.jepa is not None:
            num_layers = int(encoder.config.num_hidden_layers)
            if not 1 <= target_layers <= num_layers:
                raise ValueError(f"target_layers must be in 1..{num_layers}, got {target_layers}")
            target = copy.deepcopy(encoder)
            target.requires_grad_(False)
            self.target_encoder = target.eval()
        self.tie_weights()

    def tie_weights(self) -> None:
        tie_mlm_head(self.objective.mlm_head, self.encoder)

    def train(self, mode: bool = True) -> PretrainModel:
        super().train(mode)
        if self.target_encoder is not None:
            self.target_encoder.eval()
        return self

    def state_dict_to_save(self) -> dict[str, Tensor]:
        """The state dict without the tied aliases (:data:`TIED_KEYS`)."""
        return {k: v for k, v in self.state_dict().items() if k not in TIED_KEYS}

    def decay_at(self, progress: float) -> float:
        """EMA decay after ``progress`` (0..1) of training: linear from ``ema_decay`` to ``ema_decay_end``."""
        p = min(1.0, max(0.0, progress))
        return self.ema_decay + (self.ema_decay_end - self.ema_decay) * p

    def set_progress(self, progress: float) -> None:
        """Set the EMA decay of the coming update from the fraction of training done (0..1)."""
        self.current_decay = self.decay_at(progress)

    def update_target(self) -> None:
        """One EMA step of the target towards the encoder at ``current_decay`` (no-op for ``mlm``)."""
        if self.target_encoder is not None:
            ema_update(self.target_encoder, self.encoder, self.current_decay)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        labels: Tensor,
        target_input_ids: Tensor | None = None,
        token_type_ids: Tensor | None = None,
    ) -> dict[str, Any]:
        kwargs: dict[str, Tensor] = {"attention_mask": attention_mask}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        hidden = self.encoder(input_ids=input_ids, **kwargs).last_hidden_state  # (B, T, H)
        positions = labels.ne(IGNORE_INDEX)  # (B, T)
        # The vocabulary projection costs more than the whole encoder per token (V·H = 11.7 M MACs for
        # MiniLM): run the head on the masked rows only.
        logits = self.objective.mlm_head(hidden[positions])  # (M, V)
        mlm = F.cross_entropy(logits.float(), labels[positions])
        jepa = self.objective.jepa
        if jepa is None or self.target_encoder is None:
            v = float(mlm.detach())
            return {"loss": mlm, "terms": {"mlm": v, "total": v}}
        if target_input_ids is None:
            raise ValueError("mlm_jepa needs target_input_ids (the clean input) for the target encoder")
        with torch.no_grad():
            out = self.target_encoder(input_ids=target_input_ids, **kwargs, output_hidden_states=self.target_layers > 1)
            states = out.hidden_states[-self.target_layers :] if self.target_layers > 1 else (out.last_hidden_state,)
        result = jepa(mlm, hidden, attention_mask, positions, states)
        return {"loss": result.loss, "terms": {**result.terms, "ema_decay": self.current_decay}}

    def to_masked_lm(self) -> BertForMaskedLM:
        """A ``BertForMaskedLM`` holding copies of the encoder and head weights (for ``final_mlm``)."""
        config = copy.deepcopy(self.encoder.config)
        config.architectures = ["BertForMaskedLM"]
        mlm = BertForMaskedLM(config)
        missing, unexpected = mlm.bert.load_state_dict(self.encoder.state_dict(), strict=False)
        if missing or [k for k in unexpected if not k.startswith("pooler.")]:
            raise ValueError(
                f"encoder does not fit BertForMaskedLM: missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
        mlm.cls.load_state_dict(self.objective.mlm_head.state_dict())
        mlm.tie_weights()
        return mlm.eval()


def build_pretrain_model(cfg: PretrainConfig, encoder: PreTrainedModel) -> PretrainModel:
    """Heads for ``cfg.objective`` around ``encoder`` (seed first: the heads' init must be reproducible)."""
    hidden, _ = encoder_shape(encoder)
    jepa: MLMJEPALoss | None = None
    if cfg.objective == "mlm_jepa":
        j, b = cfg.jepa, cfg.balance
        jepa = MLMJEPALoss(
            JEPAPredictor(
                hidden, j.predictor, depth=j.predictor_depth, width=j.predictor_width, num_heads=j.predictor_heads
            ),
            LatentPredictionLoss(j.loss, beta=j.smooth_l1_beta),
            LossBalance(
                b.mode, bound=b.bound, entropy_weight=b.entropy_weight, fixed_weight=b.fixed_weight, init=b.init
            ),
        )
    return PretrainModel(
        encoder,
        PretrainHeads(build_mlm_head(encoder), jepa),
        target_layers=cfg.jepa.target_layers,
        ema_decay=cfg.jepa.ema_decay,
        ema_decay_end=cfg.jepa.ema_decay_end,
    )


# --------------------------------------------------------------------------- trainer


class EMATargetCallback(TrainerCallback):
    """After every optimizer step (``on_step_end`` runs after ``optimizer.step()`` and before any
    checkpoint is written), move the target encoder one EMA step towards the encoder.

    The decay follows the step (set at ``on_step_begin``), so a resumed run continues the schedule.
    """

    def __init__(self, model: PretrainModel) -> None:
        self.model = model

    def on_step_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> TrainerControl:
        self.model.set_progress(state.global_step / max(1, state.max_steps))
        return control

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> TrainerControl:
        self.model.update_target()
        return control


class PretrainTrainer(MipicTrainer):
    """:class:`MipicTrainer` (loss terms in every log line) with three LR groups and tied-weight-safe saves.

    Groups: encoder params at ``lr`` (the tied decoder weight is the encoder's embedding, listed once);
    heads (MLM transform and bias, predictor) at ``head_lr``; the balance's parameters at
    ``balance_lr`` without weight decay (decay would pull the log-variances to 0, i.e. to equal weights).
    """

    def __init__(self, *args: Any, balance_lr: float | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.balance_lr = balance_lr

    def create_optimizer(self) -> torch.optim.Optimizer:
        model = self.model
        if self.optimizer is not None or model is None:
            return super().create_optimizer()
        decay = set(self.get_decay_parameter_names(model))
        buckets: dict[tuple[str, bool], list[nn.Parameter]] = {}
        for name, param in model.named_parameters():  # an aliased parameter is yielded once
            if not param.requires_grad:
                continue
            if name.startswith(BALANCE_PREFIX):
                key = ("balance", False)
            else:
                key = ("head" if name.startswith(OBJECTIVE_PREFIX) else "encoder", name in decay)
            buckets.setdefault(key, []).append(param)
        lrs = {"encoder": None, "head": self.head_lr, "balance": self.balance_lr}
        groups: list[dict[str, Any]] = []
        for (kind, is_decay), params in buckets.items():
            group: dict[str, Any] = {"params": params, "weight_decay": self.args.weight_decay if is_decay else 0.0}
            if lrs[kind] is not None:
                group["lr"] = lrs[kind]
            groups.append(group)
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args)
        self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        return self.optimizer

    def _save(self, output_dir: str | None = None, state_dict: dict[str, Tensor] | None = None) -> None:
        # The base class saves a plain nn.Module with safetensors.save_file, which rejects the aliased
        # (tied) tensors: save each once; loading calls tie_weights() (see PretrainModel).
        if state_dict is None and isinstance(self.model, PretrainModel):
            state_dict = self.model.state_dict_to_save()
        super()._save(output_dir, state_dict=state_dict)


# --------------------------------------------------------------------------- entry point


def pretrain(cfg: PretrainConfig, *, sentences: Sequence[str] | None = None) -> TrainResult:
    """Run ``cfg`` (the shared skeleton of :func:`mipic.training.run.run`) and return where the final encoder
    went (``output_dir/final``).

    Args:
        cfg: the run; saved as ``output_dir/pretrain_config.yaml``, in every checkpoint and in ``final/``.
        sentences: training texts to use instead of ``cfg.data`` (tests, notebooks).
    """
    set_seed(cfg.seed)
    train_cfg = cfg.as_train_config()
    encoder, tokenizer = load_encoder(cfg.model)
    model = build_pretrain_model(cfg, encoder)
    texts = list(sentences) if sentences is not None else load_training_sentences(train_cfg)
    term_log = TermLog()

    def build_trainer() -> PretrainTrainer:
        return PretrainTrainer(
            model=model,
            args=training_arguments(train_cfg),
            train_dataset=build_dataset(texts, tokenizer, cfg.data.max_length),
            data_collator=SpanMaskingCollator(tokenizer, cfg.data.max_length, cfg.masking, seed=cfg.seed),
            processing_class=tokenizer,
            callbacks=[
                EMATargetCallback(model),
                RunFilesCallback(
                    train_cfg, term_log, lambda ckpt: save_pretrain_config(cfg, ckpt / PRETRAIN_CONFIG_FILE)
                ),
            ],
            term_log=term_log,
            head_lr=cfg.train.head_lr,
            balance_lr=cfg.balance.lr,
        )

    def finish(state: TrainerState, final_dir: Path, metrics: dict[str, float]) -> None:
        # ``final/``: the bare encoder (``save_pretrained`` + tokenizer) plus the run's config and log
        save_encoder_dir(final_dir, model.encoder, tokenizer,
                         lambda d: save_pretrain_config(cfg, d / PRETRAIN_CONFIG_FILE), term_log, state, metrics,
                         {"objective": cfg.objective})
        if cfg.save_mlm and getattr(encoder.config, "model_type", "") == "bert":
            mlm_dir = Path(cfg.train.output_dir) / FINAL_MLM_DIR
            model.to_masked_lm().save_pretrained(mlm_dir, safe_serialization=True)
            tokenizer.save_pretrained(mlm_dir)

    return run(RunSpec(
        config=cfg, seed=cfg.seed, train=cfg.train, config_file=PRETRAIN_CONFIG_FILE,
        save_config=lambda d: save_pretrain_config(cfg, d / PRETRAIN_CONFIG_FILE),
        load_config=lambda p: load_pretrain_config(p), build_trainer=build_trainer, n_examples=len(texts),
        save_final=finish, on_resume=term_log.restore,
        describe=f"pretraining objective {cfg.objective} (parameters {describe_parameters(model)})",
    ))


def balance_trajectory(log_path: Path) -> list[dict[str, float]]:
    """``step``, ``mlm``, ``jepa`` and ``balance_mlm`` of every logged step of a ``training_log.json``."""
    steps = json.loads(Path(log_path).read_text(encoding="utf-8")).get("steps", [])
    keys = ("step", "mlm", "jepa", "balance_mlm")
    return [{k: float(s[k]) for k in keys if k in s} for s in steps]
