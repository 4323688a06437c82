r"""Geometry diagnostics of an encoder under four poolings: uniformity, alignment, spectrum, effective rank per dim.

``mipic geometry MODEL... --out DIR`` writes ``geometry.json``, ``geometry.md`` and ``spectrum.png``.
The metrics are those of :mod:`mipic.training.evaluation.geometry` (the budget grid's ``geometry``
suite), on the same text sample (:func:`~mipic.training.evaluation.suites.geometry_suite` over the
built-in suites), so the numbers are comparable with a grid's ``geometry`` rows at the same layer:

* uniformity (Wang & Isola 2020, t = 2): :math:`\log \frac{1}{|P|}\sum_{i<j} e^{-2\lVert x_i - x_j\rVert^2}`
  over the distinct pairs of L2-normalised vectors; 0 = collapsed, lower = more uniform
  (−4 is the limit of a uniform sphere in high dimension, where :math:`\lVert x_i - x_j\rVert^2 \to 2`).
* alignment: :math:`\mathbb{E}\lVert x - y\rVert^2` over positive pairs (L2-normalised); lower = closer.
* effective rank (Roy & Vetterli 2007): :math:`\exp H(p)`, :math:`p_k = s_k / \sum s`, the singular
  values of the matrix of L2-normalised rows (uncentred, so a common direction — anisotropy — shows
  as a dominant first singular value); per Matryoshka prefix: rows truncated to d and re-normalised.
* isotropy: partition-function ratio (Mu & Viswanath 2018).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from transformers import AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from mipic.modeldir.manifest import default_dims
from mipic.training.evaluation.geometry import alignment, effective_rank, isotropy, uniformity
from mipic.training.evaluation.pooling import PoolingVariant, l2_normalize, pool_hidden_states, truncate_normalize

logger = logging.getLogger(__name__)

#: The four poolings of the diagnostics (``last_layers_avg``: mean pool of the average of the last
#: ``window`` layers).
DIAGNOSTIC_POOLINGS: tuple[PoolingVariant, ...] = ("cls", "mean", "max", "last_layers_avg")
#: Alias accepted for MODEL: the packaged all-MiniLM-L6-v2.
PACKAGED = "packaged"
REFERENCE_NOTE = (
    "Published reference (same uniformity definition): the MLM+JEPA hybrid reaches uniformity below "
    "−0.16 where pure MLM sits near −0.05."
)


# --------------------------------------------------------------------------- metrics on arrays


def singular_spectrum(x: np.ndarray) -> np.ndarray:
    """Singular values of the L2-normalised rows of ``x`` (N, D), divided by their sum (descending)."""
    s = np.linalg.svd(l2_normalize(np.asarray(x, dtype=np.float64)), compute_uv=False)
    total = s.sum()
    return s / total if total > 0 else s


def effective_rank_by_dim(x: np.ndarray, dims: Sequence[int]) -> dict[int, float]:
    """Effective rank of the rows truncated to each prefix ``d`` and re-normalised (the served vectors)."""
    return {int(d): effective_rank(truncate_normalize(np.asarray(x, dtype=np.float64), int(d))) for d in dims}


@dataclass
class PoolingGeometry:
    """The diagnostics of one pooling of one model."""

    uniformity: float
    effective_rank: float
    isotropy: float
    alignment: float | None
    effective_rank_by_dim: dict[int, float]
    spectrum: list[float]


def pooling_geometry(
    x: np.ndarray, dims: Sequence[int], pos_a: np.ndarray | None = None, pos_b: np.ndarray | None = None
) -> PoolingGeometry:
    """Diagnostics of the sample ``x`` (N, H) (rows re-normalised) and of the positive pairs, if given."""
    unit = l2_normalize(np.asarray(x, dtype=np.float64))
    align = None
    if pos_a is not None and pos_b is not None and len(pos_a):
        align = alignment(l2_normalize(pos_a), l2_normalize(pos_b))
    return PoolingGeometry(
        uniformity=uniformity(unit),
        effective_rank=effective_rank(unit),
        isotropy=isotropy(unit),
        alignment=align,
        effective_rank_by_dim=effective_rank_by_dim(unit, dims),
        spectrum=singular_spectrum(unit).tolist(),
    )


# --------------------------------------------------------------------------- encoding


def pool_texts(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    layer: int,
    variants: Sequence[PoolingVariant] = DIAGNOSTIC_POOLINGS,
    *,
    window: int = 2,
    max_length: int = 128,
    batch_size: int = 32,
) -> dict[str, np.ndarray]:
    """One forward pass per batch, every pooling of ``layer``: {variant: (N, H) unnormalised}."""
    hidden = int(model.config.hidden_size)
    out: dict[str, np.ndarray] = {v: np.zeros((len(texts), hidden), dtype=np.float32) for v in variants}
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))  # similar lengths per batch
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                enc = tokenizer(
                    [texts[i] for i in idx], padding=True, truncation=True, max_length=max_length, return_tensors="pt"
                ).to(device)
                states = [h.float().cpu().numpy() for h in model(**enc, output_hidden_states=True).hidden_states]
                mask = enc["attention_mask"].cpu().numpy()  # (B, T)
                for v in variants:
                    out[v][idx] = pool_hidden_states(states, mask, layer, v, window=window)
    finally:
        model.train(was_training)
    return out


# --------------------------------------------------------------------------- one model


@dataclass
class GeometryReport:
    """Diagnostics of one model at one layer, per pooling."""

    name: str
    model: str
    layer: int
    dims: list[int]
    n_texts: int
    n_pairs: int
    window: int
    poolings: dict[str, PoolingGeometry] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def model_geometry(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    pairs: Sequence[tuple[str, str]] = (),
    *,
    name: str = "model",
    source: str = "",
    layer: int | None = None,
    dims: Sequence[int] | None = None,
    variants: Sequence[PoolingVariant] = DIAGNOSTIC_POOLINGS,
    window: int = 2,
    max_length: int = 128,
    batch_size: int = 32,
) -> GeometryReport:
    """Pool the sample and the pair texts once (every variant), then compute each pooling's diagnostics."""
    if len(texts) < 2:
        raise ValueError(f"need at least two texts, got {len(texts)}")
    num_layers = int(model.config.num_hidden_layers)
    layer = num_layers if layer is None else layer
    if not 1 <= layer <= num_layers:
        raise ValueError(f"layer must be in 1..{num_layers}, got {layer}")
    hidden = int(model.config.hidden_size)
    dims = sorted(set(dims or default_dims(hidden)))
    if dims[0] < 1 or dims[-1] > hidden:
        raise ValueError(f"dims must be within 1..{hidden}, got {dims}")
    unique = list(dict.fromkeys([*texts, *(t for p in pairs for t in p)]))
    row = {t: i for i, t in enumerate(unique)}
    pooled = pool_texts(
        model, tokenizer, unique, layer, variants, window=window, max_length=max_length, batch_size=batch_size
    )
    sample = [row[t] for t in texts]
    a_rows, b_rows = [row[p[0]] for p in pairs], [row[p[1]] for p in pairs]
    report = GeometryReport(name, source, layer, list(dims), len(texts), len(pairs), window)
    for v in variants:
        x = pooled[v]
        report.poolings[v] = pooling_geometry(
            x[sample], dims, x[a_rows] if pairs else None, x[b_rows] if pairs else None
        )
        logger.info("%s %s: uniformity %.4f", name, v, report.poolings[v].uniformity)
    return report


def resolve_model_path(model: str) -> Path:
    """``packaged`` → the packaged all-MiniLM-L6-v2; anything else is a Hugging Face checkpoint dir."""
    if model == PACKAGED:
        from mipic.training.export import packaged_minilm_path

        return packaged_minilm_path()
    return Path(model)


def default_name(model: str) -> str:
    """``packaged`` → ``base``; ``runs/jepa/final`` → ``jepa``; other dirs → their own name."""
    if model == PACKAGED:
        return "base"
    path = Path(model)
    return path.parent.name if path.name in ("final", "final_mlm") and path.parent.name else path.name


# --------------------------------------------------------------------------- report


def _fmt(v: float | None, digits: int = 4) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def geometry_markdown(reports: Sequence[GeometryReport]) -> str:
    """Per pooling, one row per model; then effective rank per prefix dim."""
    if not reports:
        raise ValueError("no reports")
    r0 = reports[0]
    lines = [
        "# Embedding geometry",
        "",
        f"Layer {r0.layer}; {r0.n_texts} texts, {r0.n_pairs} positive pairs (eval split of the built-in "
        f"suites). `last_layers_avg` averages the last {r0.window} layers.",
        "",
        "Uniformity = log mean exp(−2‖x−y‖²) over distinct pairs of L2-normalised vectors (Wang & Isola, "
        "t = 2; lower = more uniform, 0 = collapsed). Alignment = mean ‖x−y‖² over positive pairs (lower = "
        "closer). Effective rank = exp(entropy of the normalised singular values), rows L2-normalised.",
        "",
        REFERENCE_NOTE,
        "",
        "| pooling | model | uniformity | alignment | effective rank | isotropy |",
        "|---|---|---:|---:|---:|---:|",
    ]
    poolings = list(r0.poolings)
    for v in poolings:
        for r in reports:
            g = r.poolings.get(v)
            if g is not None:
                lines.append(
                    f"| {v} | {r.name} | {_fmt(g.uniformity)} | {_fmt(g.alignment)} | "
                    f"{_fmt(g.effective_rank, 2)} | {_fmt(g.isotropy)} |"
                )
    dims = r0.dims
    lines += [
        "",
        "## Effective rank per prefix dim",
        "",
        "| pooling | model | " + " | ".join(f"d={d}" for d in dims) + " |",
        "|---|---|" + "---:|" * len(dims),
    ]
    for v in poolings:
        for r in reports:
            g = r.poolings.get(v)
            if g is not None:
                cells = " | ".join(_fmt(g.effective_rank_by_dim.get(d), 2) for d in dims)
                lines.append(f"| {v} | {r.name} | {cells} |")
    return "\n".join(lines) + "\n"


def plot_spectrum(reports: Sequence[GeometryReport], path: Path) -> Path:
    """Top row: normalised singular values (log scale) per pooling, one line per model. Bottom row:
    effective rank against the Matryoshka prefix dim. Agg canvas: no display, no global state."""
    poolings = list(reports[0].poolings)
    fig = Figure(figsize=(4.2 * len(poolings), 7.0), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, len(poolings), squeeze=False)
    for j, v in enumerate(poolings):
        top, bottom = axes[0][j], axes[1][j]
        floor = np.inf
        for r in reports:
            g = r.poolings.get(v)
            if g is None:
                continue
            spectrum = np.asarray(g.spectrum)
            top.plot(np.arange(1, len(spectrum) + 1), spectrum, label=f"{r.name} (u={g.uniformity:.3f})")
            # A LayerNorm output can leave one direction numerically empty (~1e-18): keep it off the scale.
            useful = spectrum[spectrum > 1e-4 * spectrum.max()]
            floor = min(floor, float(useful.min()) if useful.size else floor)
            dims = sorted(g.effective_rank_by_dim)
            bottom.plot(dims, [g.effective_rank_by_dim[d] for d in dims], marker="o", label=r.name)
        top.set_yscale("log")
        if np.isfinite(floor):
            top.set_ylim(bottom=floor / 2)
        top.set_title(f"{v}: singular values")
        top.set_xlabel("index")
        top.set_ylabel("s_k / Σ s")
        top.legend(fontsize=8)
        bottom.set_xscale("log", base=2)
        bottom.set_title(f"{v}: effective rank vs dim")
        bottom.set_xlabel("dim")
        bottom.set_ylabel("effective rank")
        bottom.legend(fontsize=8)
    fig.savefig(path, dpi=100)
    return path


def write_geometry(reports: Sequence[GeometryReport], out_dir: Path) -> list[Path]:
    """``geometry.json`` (every number, spectra included), ``geometry.md`` and ``spectrum.png``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {
        "definitions": {
            "uniformity": "log mean_{i<j} exp(-2 ||x_i - x_j||^2), rows L2-normalised",
            "alignment": "mean ||x - y||^2 over positive pairs, rows L2-normalised",
            "effective_rank": "exp(entropy(s / sum s)), s = singular values of the L2-normalised rows",
        },
        "reference": REFERENCE_NOTE,
        "models": [r.to_dict() for r in reports],
    }
    paths = [out_dir / "geometry.json", out_dir / "geometry.md", out_dir / "spectrum.png"]
    paths[0].write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
    paths[1].write_text(geometry_markdown(reports), encoding="utf-8")
    plot_spectrum(reports, paths[2])
    return paths


def geometry_command(
    models: Sequence[str],
    out: Path,
    *,
    names: Sequence[str] | None = None,
    layer: int | None = None,
    dims: Sequence[int] | None = None,
    window: int = 2,
    max_items: int = 300,
    max_texts: int = 1000,
    max_pairs: int = 1000,
    max_length: int = 128,
    batch_size: int = 32,
    data_dir: Path | None = None,
    seed: int = 0,
) -> list[GeometryReport]:
    """``mipic geometry``: the grid's geometry sample (built-in suites of ``max_items`` each), every model."""
    from mipic.training.evaluation.suites import builtin_suites, geometry_suite

    if not models:
        raise ValueError("give at least one model")
    if names is not None and len(names) != len(models):
        raise ValueError(f"{len(names)} names for {len(models)} models")
    sample = geometry_suite(builtin_suites(data_dir, size=max_items, seed=seed), max_texts, max_pairs, seed)
    reports = []
    for i, m in enumerate(models):
        path = resolve_model_path(m)
        encoder = AutoModel.from_pretrained(str(path))
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        reports.append(
            model_geometry(
                encoder,
                tokenizer,
                sample.sample,
                sample.pairs,
                name=names[i] if names is not None else default_name(m),
                source=str(path),
                layer=layer,
                dims=dims,
                window=window,
                max_length=max_length,
                batch_size=batch_size,
            )
        )
    write_geometry(reports, out)
    return reports
