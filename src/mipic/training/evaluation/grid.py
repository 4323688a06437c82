"""Score every (layer, dim) budget of an encoder on every suite."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from mipic.modeldir.manifest import default_dims
from mipic.training.evaluation.encoders import AllLayersEncoder, BudgetEncoder
from mipic.training.evaluation.pooling import truncate_normalize
from mipic.training.evaluation.report import write_report
from mipic.training.evaluation.result import EXIT_COSINE, EXITS_SUITE, INDEX_PREFIX, GridResult
from mipic.training.evaluation.suites import Embed, Suite, geometry_suite

logger = logging.getLogger(__name__)

#: Dims at which every (query layer, document layer) pair is scored when present in the grid: a small budget
#: and the full width (the widest dim of the grid is always one of them).
EXIT_PAIR_DIMS = (64,)


def exit_pair_dims(dims: Sequence[int]) -> list[int]:
    """The grid's dims at which every (query layer, document layer) pair is scored: those of
    :data:`EXIT_PAIR_DIMS` the grid has, and its widest."""
    return sorted({d for d in dims if d in EXIT_PAIR_DIMS} | {max(dims)})


def _check_budgets(encoder: BudgetEncoder, layers: Sequence[int], dims: Sequence[int]) -> None:
    bad_layers = [ly for ly in layers if not 1 <= ly <= encoder.num_layers]
    bad_dims = [d for d in dims if not 1 <= d <= encoder.hidden_size]
    if bad_layers or bad_dims or not layers or not dims:
        raise ValueError(
            f"layers must be non-empty within 1..{encoder.num_layers} and dims within "
            f"1..{encoder.hidden_size}; got layers={list(layers)}, dims={list(dims)}"
        )


def run_grid(
    encoder: BudgetEncoder,
    suites: Sequence[Suite],
    layers: Sequence[int] | None = None,
    dims: Sequence[int] | None = None,
    *,
    geometry: bool = True,
    cross: bool = True,
    out_dir: Path | None = None,
    model_name: str = "",
    seed: int = 0,
) -> GridResult:
    """Score every (layer, dim) on every suite (plus a ``geometry`` suite unless disabled).

    With ``cross`` (default) each budget is also compared with the same dim at the encoder's last layer:
    retrieval suites get ``index_<metric>`` (queries at (d, l) against documents at (d, L): can a shallow
    query search an index built at full depth?) and the ``exits`` pseudo-suite ``cosine_to_last`` (mean
    cosine between a text's (d, l) and (d, L) vectors). At the dims of :func:`exit_pair_dims` it also scores
    every pair of exits (``GridResult.exit_pairs``): queries at (d, a) against documents at (d, b) for every a, b
    of ``layers``, each retrieval suite's main metric — an index built at any exit, searched from any other.

    Every distinct text is embedded once: through ``encode_all_layers`` when the encoder has it
    (one forward pass for the whole grid), else one ``encode`` call per budget. Writes
    ``grid.json``, ``grid.md`` and heatmaps into ``out_dir`` when given.
    """
    if not suites:
        raise ValueError("no eval suites given")
    names = [s.name for s in suites]
    if len(set(names)) != len(names) or "geometry" in names or EXITS_SUITE in names:
        raise ValueError(f"suite names must be unique and not 'geometry' or '{EXITS_SUITE}', got {names}")
    layers = sorted(set(layers or range(1, encoder.num_layers + 1)))
    # an encoder that knows its served dims (an ONNX export) is scored on exactly those
    dims = sorted(set(dims or getattr(encoder, "dims", None) or default_dims(encoder.hidden_size)))
    _check_budgets(encoder, layers, dims)
    all_suites: list[Suite] = [*suites, geometry_suite(suites, seed=seed)] if geometry else list(suites)

    start = time.perf_counter()
    texts = list(dict.fromkeys(t for s in all_suites for t in s.texts()))
    row_of = {t: i for i, t in enumerate(texts)}
    logger.info("grid: %d texts, %d suites, layers %s, dims %s", len(texts), len(all_suites), layers, dims)
    all_layers = None  # (L, N, H) when the encoder can give every layer in one pass
    if isinstance(encoder, AllLayersEncoder):
        all_layers = encoder.encode_all_layers(texts)
    encode_seconds = time.perf_counter() - start

    scores: dict[str, dict[str, list[list[float]]]] = {s.name: {} for s in all_suites}
    if cross:
        scores[EXITS_SUITE] = {}

    def put(suite_name: str, metric: str, i: int, j: int, v: float) -> None:
        table = scores[suite_name].setdefault(metric, [[math.nan] * len(dims) for _ in layers])
        table[i][j] = v

    last = encoder.num_layers
    last_layer_vectors: dict[int, np.ndarray] = {}  # dim → (N, dim): each is the reference of a whole column
    pair_dims = exit_pair_dims(dims) if cross and len(layers) > 1 else []
    kept: dict[tuple[int, int], np.ndarray] = {}  # (layer, dim) → (N, dim) at the pair dims

    def budget(layer: int, dim: int) -> np.ndarray:
        nonlocal encode_seconds
        if all_layers is not None:
            return truncate_normalize(all_layers[layer - 1], dim)  # (N, dim)
        if layer == last and dim in last_layer_vectors:
            return last_layer_vectors[dim]
        tick = time.perf_counter()
        out = encoder.encode(texts, layer, dim)
        encode_seconds += time.perf_counter() - tick
        if layer == last:
            last_layer_vectors[dim] = out
        return out

    bar = tqdm(total=len(layers) * len(dims), desc="scoring budgets", unit="budget", leave=False)
    for i, layer in enumerate(layers):
        for j, dim in enumerate(dims):
            emb = budget(layer, dim)
            if dim in pair_dims:
                kept[layer, dim] = emb

            def embed(batch: Sequence[str], emb: np.ndarray = emb) -> np.ndarray:
                return emb[[row_of[t] for t in batch]]

            for suite in all_suites:
                for metric, v in _evaluate(suite, embed).items():
                    put(suite.name, metric, i, j, v)
            if cross:
                ref = emb if layer == last else budget(last, dim)

                def embed_ref(batch: Sequence[str], ref: np.ndarray = ref) -> np.ndarray:
                    return ref[[row_of[t] for t in batch]]

                put(EXITS_SUITE, EXIT_COSINE, i, j, float(np.mean(np.sum(emb * ref, axis=1))))
                for suite in suites:
                    index = getattr(suite, "evaluate_index", None)
                    if index is not None:
                        for metric, v in index(embed, embed_ref).items():
                            put(suite.name, metric, i, j, float(v))
            logger.debug("grid: layer %d dim %d done", layer, dim)
            bar.update()
    bar.close()
    exit_pairs = _score_exit_pairs(suites, kept, layers, pair_dims, row_of)

    result = GridResult(
        model=model_name,
        layers=list(layers),
        dims=list(dims),
        scores=scores,
        main_metrics={s.name: s.main_metric for s in suites},
        n_texts=len(texts),
        seconds=time.perf_counter() - start,
        exit_pairs=exit_pairs,
    )
    result.meta["encode_seconds"] = encode_seconds
    result.meta["score_seconds"] = result.seconds - encode_seconds
    logger.info("grid: encoding %.1f s, scoring %.1f s", encode_seconds, result.meta["score_seconds"])
    if out_dir is not None:
        write_report(result, out_dir)
    return result


def _score_exit_pairs(
    suites: Sequence[Suite],
    kept: dict[tuple[int, int], np.ndarray],
    layers: Sequence[int],
    dims: Sequence[int],
    row_of: dict[str, int],
) -> dict[str, dict[str, list[list[float]]]]:
    """``{suite: {str(dim): table}}``, ``table[i][j]`` = the suite's main metric with queries at (dim, layers[i])
    and documents at (dim, layers[j]); retrieval suites only (those with ``evaluate_index``)."""
    out: dict[str, dict[str, list[list[float]]]] = {}
    for suite in suites:
        index = getattr(suite, "evaluate_index", None)
        if index is None or not dims:
            continue
        metric = INDEX_PREFIX + suite.main_metric
        tables = out.setdefault(suite.name, {})
        for dim in dims:

            def embed_at(layer: int, dim: int = dim) -> Embed:
                vectors = kept[layer, dim]
                return lambda batch: vectors[[row_of[t] for t in batch]]

            tables[str(dim)] = [[float(index(embed_at(a), embed_at(b))[metric]) for b in layers] for a in layers]
    return out


def _evaluate(suite: Suite, embed: Embed) -> dict[str, float]:
    return {k: float(v) for k, v in suite.evaluate(embed).items()}
