"""``mipic eval``: build the suites and the encoder from paths, run the grid, write the report."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from mipic.modeldir.heads import ExitHeads
from mipic.training.evaluation.encoders import AllLayersEncoder, BudgetEncoder, TorchBudgetEncoder
from mipic.training.evaluation.grid import run_grid
from mipic.training.evaluation.report import write_report
from mipic.training.evaluation.result import GridResult
from mipic.training.evaluation.suites import collect_suites
from mipic.training.evaluation.variants import VARIANTS, compare_variants

logger = logging.getLogger(__name__)


def load_encoder(model: str | Path, max_length: int = 128, batch_size: int = 32) -> BudgetEncoder:
    """A staged ONNX export (has ``manifest.json``) → the serving engine's runner; a Hugging Face
    checkpoint directory → :class:`TorchBudgetEncoder`."""
    if (Path(model) / "manifest.json").is_file():
        from mipic.training.evaluation.onnx_encoder import OnnxBudgetEncoder

        return OnnxBudgetEncoder(Path(model), max_length=max_length, batch_size=batch_size)
    return TorchBudgetEncoder(model, max_length=max_length, batch_size=batch_size)


def variant_heads(
    encoder: BudgetEncoder, names: Sequence[str], fit_sentences: int, data_dir: Path | None, seed: int
) -> dict[str, ExitHeads | None]:
    """The exit heads behind each read-out: ``plain`` none, ``pca`` rotations fitted on ``fit_sentences``
    training-split sentences (never eval texts), ``heads`` the model's own."""
    from mipic.training.heads import HeadFitConfig, fit_pca, fitting_texts

    out: dict[str, ExitHeads | None] = {}
    for name in names:
        if name == "plain":
            out[name] = None
        elif name == "heads":
            heads = getattr(encoder, "heads", None)
            if heads is None:
                raise ValueError("variant 'heads' needs a model directory that carries exit heads")
            out[name] = heads
        elif name == "pca":
            if not isinstance(encoder, AllLayersEncoder):
                raise ValueError("variant 'pca' needs an encoder that pools every layer in one pass")
            texts = fitting_texts(HeadFitConfig(method="pca", sentences=fit_sentences, seed=seed), data_dir)
            out[name] = fit_pca(encoder.encode_all_layers(texts))
        else:
            raise ValueError(f"unknown variant {name!r}; expected some of {', '.join(VARIANTS)}")
    return out


def eval_command(
    model: str,
    out: Path,
    pairs: Path | None = None,
    pair_labels: Path | None = None,
    retrieval: Path | None = None,
    classification: Path | None = None,
    builtin: bool = False,
    layers: list[int] | None = None,
    dims: list[int] | None = None,
    max_items: int = 300,
    *,
    max_length: int = 128,
    batch_size: int = 32,
    data_dir: Path | None = None,
    seed: int = 0,
    variants: Sequence[str] | None = None,
    fit_sentences: int = 4000,
) -> GridResult:
    """Evaluate ``model`` (a Hugging Face checkpoint dir or an exported model dir) at every (layer, dim);
    write the report to ``out`` and return the grid of the read-out the model serves.

    Suites: the given files (each capped at ``max_items``) and, with ``builtin``, the built-in suites
    of ``max_items`` items each. ``layers``/``dims`` default to all layers and :func:`default_dims`.
    ``variants`` (default: ``plain``, ``pca`` and, when the model has them, ``heads``) are scored side by
    side (``<out>/compare.md``, ``<out>/variants/<name>/``); ``<out>/grid.*`` is the served read-out
    (``heads`` if the model has heads, else ``plain``).
    """
    if max_items < 2:
        raise ValueError(f"max_items must be >= 2, got {max_items}")
    suites = collect_suites(pairs, pair_labels, retrieval, classification, builtin, max_items, data_dir, seed)
    encoder = load_encoder(model, max_length=max_length, batch_size=batch_size)
    served = "heads" if getattr(encoder, "heads", None) is not None else "plain"
    default = ["plain", "pca", "heads"] if served == "heads" else ["plain", "pca"]
    names = list(dict.fromkeys([*(variants or default), served]))
    if not isinstance(encoder, AllLayersEncoder):  # a custom encoder: only its own read-out
        result = run_grid(encoder, suites, layers, dims, out_dir=Path(out), model_name=str(model), seed=seed)
        return result
    heads = variant_heads(encoder, names, fit_sentences, data_dir, seed)
    results = compare_variants(encoder, suites, heads, layers, dims, out_dir=Path(out), model_name=str(model),
                               seed=seed)
    result = results[served]
    result.meta["read_out"] = served
    write_report(result, Path(out))
    logger.info("evaluated %s (%s) on %d suites in %.1f s", model, ", ".join(names), len(suites),
                sum(r.seconds for r in results.values()))
    return result
