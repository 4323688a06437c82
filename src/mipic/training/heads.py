"""Fit exit heads on a model directory: closed-form PCA rotations or least squares, or KL self-distillation.

A head per exit layer l maps the pooled state x of that layer to ``z = W_l x + b_l`` before the
Matryoshka cut (``mipic.modeldir.vector.embed``). Three methods:

``pca``
    W_l = the principal axes (rows, by decreasing variance) of the layer's *centred, L2-normalised*
    pooled states, b_l = 0: an orthogonal rotation, so full-width cosine similarities are untouched
    and each prefix keeps the most variance it can. No training.

``lstsq``
    One space for every exit (issue 18). The last layer keeps its PCA rotation W_L; every other layer gets
    the closed-form ridge regression onto the last layer's unit vector in those coordinates,

        [W_l b_l] = argmin Σ_i ‖W_l x_i^(l) + b_l − y_i‖² + λ‖W_l‖²_F,   y_i = W_L x_i^(L) / ‖x_i^(L)‖,

    so the served (d, l) vector approximates the first d coordinates of the (H, L) vector text by text.
    Least squares treats each output coordinate separately, so the first d rows of W_l are also the best
    map onto the first d coordinates alone: one fit serves every prefix. λ = ``ridge`` × mean diag(XᵀX).

``distill`` (default)
    Start from the ``lstsq`` solution (with ``align_weight`` > 0; otherwise from the PCA rotation with
    b_l = −W_l μ_l centring the layer's raw pooled mean, the recipe before issue 18), then minimise, over
    batches of fitting sentences,

        L = 1/|S| Σ_{(l, d) ∈ S} [ KL( P_T ‖ P_{l,d} ) + w_align · mean_i (1 − cos(z_i[:d], y_i[:d])) ],
        P_T[i, :]     = softmax_{j≠i}( cos(t_i, t_j) / τ ),   t = teacher vectors (frozen),
        P_{l,d}[i, :] = softmax_{j≠i}( cos(z_i[:d], z_j[:d]) / τ ),  z = W_l x + b_l,

    where S is every exit layer l with every served dim d (nested prefixes), τ the temperature (0.05),
    y the target of ``lstsq`` (the teacher's vector through the last layer's head), w_align =
    ``align_weight`` (30: measured on MiniLM, README), and the diagonal is masked (a text's similarity with
    itself carries no information). The teacher
    is, by default, the model's own last layer at full width without a head (``teacher_layer``,
    ``teacher_dim`` change it): it is a fixed array of features, so it cannot drift.

    The last layer's head is constrained (``last_layer``), because the teacher *is* that layer at full
    width and the full budget must not drift: ``pca`` (default) keeps the PCA rotation, untrained;
    ``orthogonal`` trains it under the KL objective while keeping W_L a rotation and b_L = 0
    (``torch.nn.utils.parametrizations.orthogonal``); both serve the full budget (L, H) with exactly the
    similarities it had without heads, while its prefixes improve. ``affine`` fits it like the other
    layers; ``identity`` leaves the last layer as plain truncation. Measured on MiniLM (README): the
    trained rotation lost to the plain PCA rotation at layer 6, dims 16–64, so ``pca`` is the default.

Features are the pooled states the server itself computes (the staged ONNX graphs through
``LoadedModel.pool_all_layers``), for sentences of the project's *training* split only, cached on disk
per (model files, texts, max length).
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from mipic.modeldir.heads import ExitHeads, check_heads
from mipic.modeldir.manifest import Budget, HeadsSpec
from mipic.modeldir.runner import LoadedModel
from mipic.training.data.text import texts_digest
from mipic.training.exit_heads import ExitHeadsModule, LastHead
from mipic.training.heads_config import HeadFitConfig, LastLayer
from mipic.training.losses.distill import distill_kl, similarity_logits

logger = logging.getLogger(__name__)

__all__ = ["HeadFitConfig", "HeadFitResult", "extract_features", "fit_distill", "fit_heads", "fit_lstsq",
           "fit_pca", "fitting_texts", "last_layer_targets", "pca_rotation", "ridge_map", "texts_digest"]


@dataclass
class HeadFitResult:
    heads: ExitHeads
    spec: HeadsSpec
    seconds: dict[str, float] = field(default_factory=dict)
    loss_curve: list[float] = field(default_factory=list)


# --------------------------------------------------------------------------- features


def _model_digest(model: LoadedModel) -> str:
    """Changes when any graph or the tokenizer changes (the heads file does not affect pooled states)."""
    m = model.manifest
    parts = [m.files.get(s.path, s.path) for s in m.stages] + [m.files.get(m.tokenizer, m.tokenizer), m.pooling]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def extract_features(
    model: LoadedModel,
    texts: Sequence[str],
    *,
    batch_size: int = 64,
    cache_dir: Path | None = None,
    progress: bool = True,
) -> np.ndarray:
    """(L, N, H) pooled states of every layer for ``texts``, computed by the served graphs.

    Texts are sorted by token length so batches pad little; with ``cache_dir`` the array is stored
    as ``features-<digest>.npy`` and reused.
    """
    key = hashlib.sha256(
        f"{_model_digest(model)}\0{texts_digest(texts)}\0{model.tokenizer.max_length}".encode()
    ).hexdigest()[:24]
    cache = cache_dir / f"features-{key}.npy" if cache_dir is not None else None
    if cache is not None and cache.is_file():
        return np.load(cache, allow_pickle=False)
    ids = [e.ids for e in model.tokenizer.encode(list(texts))]
    order = sorted(range(len(ids)), key=lambda i: ids[i].shape[0])
    m = model.manifest
    out = np.empty((m.num_layers, len(ids), m.hidden_size), dtype=np.float32)
    bar = tqdm(total=len(ids), desc="pooled states", unit="text", disable=not progress, leave=False)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        out[:, chunk] = model.pool_all_layers([ids[i] for i in chunk])
        bar.update(len(chunk))
    bar.close()
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp.npy")
        np.save(tmp, out)
        tmp.replace(cache)
    return out


# --------------------------------------------------------------------------- PCA


def pca_rotation(pooled: np.ndarray) -> np.ndarray:
    """(N, H) pooled states → (H, H) orthogonal W whose rows are the principal axes of the centred,
    L2-normalised states, by decreasing variance (signs fixed so each axis' largest entry is positive)."""
    x = pooled.astype(np.float64)
    x /= np.clip(np.linalg.norm(x, axis=1, keepdims=True), 1e-12, None)
    x -= x.mean(axis=0, keepdims=True)
    cov = x.T @ x / max(1, x.shape[0] - 1)
    _, vectors = np.linalg.eigh(cov)  # eigenvalues ascending
    w = vectors[:, ::-1].T.copy()  # (H, H), rows = axes by decreasing variance
    signs = np.sign(w[np.arange(w.shape[0]), np.abs(w).argmax(axis=1)])
    return (w * signs[:, None]).astype(np.float32)


def fit_pca(features: np.ndarray) -> ExitHeads:
    """One PCA rotation per layer, no bias: (L, N, H) features → heads."""
    weight = np.stack([pca_rotation(f) for f in features])
    return ExitHeads(weight, np.zeros(weight.shape[:2], np.float32))


def last_layer_targets(features: np.ndarray, last_weight: np.ndarray) -> np.ndarray:
    """(N, H) unit vectors of the last layer in its head's coordinates: y = W_L x^(L) / ‖x^(L)‖."""
    x = features[-1].astype(np.float64)
    x /= np.clip(np.linalg.norm(x, axis=1, keepdims=True), 1e-12, None)
    return (x @ last_weight.astype(np.float64).T).astype(np.float32)


def ridge_map(x: np.ndarray, y: np.ndarray, ridge: float) -> tuple[np.ndarray, np.ndarray]:
    """argmin_{W, b} ‖x Wᵀ + b − y‖² + λ‖W‖² (bias not penalised), λ = ridge × mean diag(xᵀx) of the
    centred x. Returns W (H_out, H_in), b (H_out,)."""
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    mx, my = x64.mean(axis=0), y64.mean(axis=0)
    xc, yc = x64 - mx, y64 - my
    gram = xc.T @ xc  # (H_in, H_in)
    lam = ridge * float(np.trace(gram)) / gram.shape[0]
    w = np.linalg.solve(gram + lam * np.eye(gram.shape[0]), xc.T @ yc).T  # (H_out, H_in)
    b = my - w @ mx
    return w.astype(np.float32), b.astype(np.float32)


def fit_lstsq(features: np.ndarray, ridge: float = 1e-3, last_weight: np.ndarray | None = None) -> ExitHeads:
    """Heads sharing one space (see the module docstring): the last layer's PCA rotation (or ``last_weight``),
    every other layer the ridge map onto the last layer's unit vector in that rotation's coordinates."""
    num_layers, _, hidden = features.shape
    last = pca_rotation(features[-1]) if last_weight is None else last_weight.astype(np.float32)
    y = last_layer_targets(features, last)
    weights, biases = [], []
    for layer in range(num_layers - 1):
        w, b = ridge_map(features[layer], y, ridge)
        weights.append(w)
        biases.append(b)
    weights.append(last)
    biases.append(np.zeros(hidden, np.float32))
    return ExitHeads(np.stack(weights), np.stack(biases))


# --------------------------------------------------------------------------- distillation


#: ``last_layer`` of a head fit → how the last head trains in :class:`ExitHeadsModule` (``pca`` and ``identity``
#: fix it: the last layer is then left out of the loss as well).
_LAST_HEAD: dict[LastLayer, LastHead] = {"pca": "fixed", "identity": "fixed", "orthogonal": "orthogonal",
                                         "affine": "affine"}


def fit_distill(
    features: np.ndarray, cfg: HeadFitConfig, dims: Sequence[int], progress: bool = True
) -> tuple[ExitHeads, list[float]]:
    """Fit heads on (L, N, H) features by KL self-distillation (see the module docstring)."""
    num_layers, n, hidden = features.shape
    t_layer = cfg.teacher_layer or num_layers
    t_dim = cfg.teacher_dim or hidden
    if not (1 <= t_layer <= num_layers and 1 <= t_dim <= hidden):
        raise ValueError(f"teacher ({t_dim}, {t_layer}) is outside the model ({hidden}, {num_layers})")
    dims = sorted({int(d) for d in dims if 0 < d <= hidden})
    gen = torch.Generator().manual_seed(cfg.seed)
    init = fit_pca(features)
    means = features.mean(axis=1)  # (L, H): centre each shallow layer's raw pooled states
    init_bias = -np.einsum("lij,lj->li", init.weight, means).astype(np.float32)
    if cfg.last_layer == "affine":
        init = ExitHeads(init.weight, init_bias)
    else:
        init = ExitHeads(init.weight, np.concatenate([init_bias[:-1], np.zeros((1, hidden), np.float32)]))
    if cfg.last_layer == "identity":
        init = ExitHeads(
            np.concatenate([init.weight[:-1], np.eye(hidden, dtype=np.float32)[None]]), init.bias
        )
    if cfg.align_weight > 0:
        # start where the absolute term is at its closed-form optimum (the last layer's head is unchanged)
        aligned = fit_lstsq(features, cfg.ridge, last_weight=init.weight[-1])
        init = ExitHeads(np.concatenate([aligned.weight[:-1], init.weight[-1:]]),
                         np.concatenate([aligned.bias[:-1], init.bias[-1:]]))
    model = ExitHeadsModule(init, _LAST_HEAD[cfg.last_layer])
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=cfg.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, cfg.steps) / max(1, cfg.steps)))
    )
    feats = torch.from_numpy(features)
    teacher_all = feats[t_layer - 1, :, :t_dim]
    # align target: the last layer's unit vector in its (PCA) head's coordinates, as `lstsq` regresses onto
    align_all = torch.from_numpy(last_layer_targets(features, init.weight[-1]))
    batch = min(cfg.batch_size, n)
    fixed_last = cfg.last_layer in ("identity", "pca")
    layers = [ly for ly in range(1, num_layers + 1) if not (ly == num_layers and fixed_last)]
    curve: list[float] = []
    bar = tqdm(range(cfg.steps), desc="fitting heads", unit="step", disable=not progress, leave=False)
    for _ in bar:
        idx = torch.randperm(n, generator=gen)[:batch]
        with torch.no_grad():
            t_log = F.log_softmax(similarity_logits(teacher_all[idx], cfg.temperature), dim=-1)
        total = torch.zeros(())
        count = 0
        y = align_all[idx]  # (B, H)
        for ly in layers:
            z = model(ly, feats[ly - 1, idx])  # (B, H)
            for d in dims:
                term = distill_kl(z[:, :d], t_log, cfg.temperature)
                if cfg.align_weight > 0:
                    term = term + cfg.align_weight * (1 - F.cosine_similarity(z[:, :d], y[:, :d], dim=-1)).mean()
                total = total + term
                count += 1
        loss = total / max(1, count)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        curve.append(float(loss.detach()))
        bar.set_postfix(loss=f"{curve[-1]:.4f}")
    return model.export(), curve


# --------------------------------------------------------------------------- entry point


def fitting_texts(cfg: HeadFitConfig, data_dir: Path | None = None) -> list[str]:
    """``cfg.sentences`` training-split sentences plus ``cfg.passages`` document-like passages (the first
    three sentences of news/BBC bodies, so retrieval's documents are in the fitting distribution too);
    never an eval-split text, seeded."""
    from mipic.training.data.sentences import load_passages, load_sentences

    texts = load_sentences(cfg.sentences, seed=cfg.seed, split="train", data_dir=data_dir, sources=cfg.sources)
    if cfg.passages:
        sources = tuple(s for s in cfg.sources if s in ("news", "bbc"))
        texts += load_passages(cfg.passages, seed=cfg.seed, split="train", data_dir=data_dir, sources=sources)
    return texts


def fit_heads(
    model: LoadedModel,
    cfg: HeadFitConfig,
    *,
    texts: Sequence[str] | None = None,
    data_dir: Path | None = None,
    cache_dir: Path | None = None,
    progress: bool = True,
) -> HeadFitResult:
    """Fit heads for ``model`` (its graphs give the features); ``texts`` default to :func:`fitting_texts`."""
    torch.manual_seed(cfg.seed)
    m = model.manifest
    dims = list(cfg.dims or m.dims)
    seconds: dict[str, float] = {}
    tick = time.perf_counter()
    given = texts is not None
    texts = list(texts) if texts is not None else fitting_texts(cfg, data_dir)
    seconds["data"] = time.perf_counter() - tick
    tick = time.perf_counter()
    features = extract_features(model, texts, cache_dir=cache_dir, progress=progress)
    seconds["features"] = time.perf_counter() - tick
    tick = time.perf_counter()
    curve: list[float] = []
    if cfg.method == "pca":
        heads = fit_pca(features)
    elif cfg.method == "lstsq":
        heads = fit_lstsq(features, cfg.ridge)
    else:
        heads, curve = fit_distill(features, cfg, dims, progress=progress)
    seconds["fit"] = time.perf_counter() - tick
    check_heads(heads, m.num_layers, m.hidden_size)
    layers = m.layers if cfg.last_layer != "identity" or cfg.method == "pca" else m.layers[:-1]
    if cfg.method == "distill" and cfg.last_layer == "pca":
        spec_note = "last layer: PCA rotation (not trained)"
    else:
        spec_note = f"last layer: {cfg.last_layer}"
    spec = HeadsSpec(
        method=cfg.method,
        recipe=cfg.recipe(),
        data={
            "texts": len(texts),
            "split": "given by caller" if given else "train",
            "sources": ",".join(cfg.sources) if not given else "caller",
            "texts_sha256": texts_digest(texts)[:16],
            "teacher": f"layer {cfg.teacher_layer or m.num_layers}, dim {cfg.teacher_dim or m.hidden_size}"
            + (" (the base model's own last layer, frozen features)" if cfg.method == "distill" else ""),
            "note": spec_note,
        },
        fitted_budgets=[Budget(dim=d, layer=ly) for ly in layers for d in dims],
    )
    logger.info("fitted %s heads on %d texts: %s", cfg.method, len(texts),
                ", ".join(f"{k} {v:.1f}s" for k, v in seconds.items()))
    return HeadFitResult(heads=heads, spec=spec, seconds=seconds, loss_curve=curve)
