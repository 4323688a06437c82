"""``mipic retrain``: train → export → evaluate → quality gate → register → promote (→ re-embed), resumable.

Order: the candidate is exported (with its PyTorch parity check) *before* it is evaluated, so the
gate scores exactly the ONNX graphs that would be served, through the serving engine's runner, on
the same suites as the version being served. Every step records its outputs in
``<work_dir>/<run_id>/state.json``; rerunning the same run id skips finished steps. Nothing touches
the repository's CURRENT pointer before the last step, so a failure anywhere leaves the served
version as it was. The optional last step re-embeds a corpus with the promoted version (``mipic embed``,
``mipic.corpus``), so an index can follow the model; a re-run of the same run id resumes it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from mipic.modeldir.manifest import SHARED_SPACE_MIN_COSINE, load_manifest, write_manifest
from mipic.modeldir.repository import ModelRepository

logger = logging.getLogger(__name__)

STEPS = ("train", "export", "evaluate", "gate", "register", "promote", "reembed")


class EvalSection(BaseModel):
    model_config = ConfigDict(extra="forbid")

    builtin: bool = True
    max_items: int = Field(200, ge=2)
    pairs: Path | None = None
    pair_labels: Path | None = None
    retrieval: Path | None = None
    classification: Path | None = None
    layers: list[int] | None = None
    dims: list[int] | None = None
    max_length: int = 128


class GateSection(BaseModel):
    """The candidate may not be worse than the served version, judged where the scores are not noise.

    One suite at one budget is a noisy cell (300 items: one sentiment item is 0.0033, and an unchanged
    model moves a few items between seeds), so the tight bounds apply to means: ``max_drop`` bounds the
    drop of each budget's mean over the suites' main metrics, ``max_suite_drop`` the drop of each suite's
    mean over the budgets; ``max_cell_drop`` is the looser bound for any single suite at any budget. The
    defaults sit just above what the seed alone moves (the same recipe and data, seeds 42/43/44, 300 items per
    suite: budget means by up to 0.016, suite means by up to 0.009, single cells by up to 0.05), so an
    equally good candidate passes and a real regression does not. Every
    budget in ``must_improve`` (e.g. ``d64_l3``) must gain more than ``min_gain`` on the mean of the suites.
    """

    model_config = ConfigDict(extra="forbid")

    max_drop: float = Field(0.02, ge=0, description="per budget, mean of the suites' main metrics")
    max_suite_drop: float = Field(0.015, ge=0, description="per suite, mean over the budgets")
    max_cell_drop: float = Field(0.06, ge=0, description="any one suite at any one budget")
    must_improve: list[str] = Field(default_factory=list)
    min_gain: float = Field(0.0, ge=0, description="how much a must_improve budget has to gain")
    min_exit_cosine: float | None = Field(
        SHARED_SPACE_MIN_COSINE, gt=0, le=1,
        description="the candidate's exits must share one space: at every budget the mean cosine between a "
        "text's (dim, layer) and (dim, last layer) vectors reaches this (the manifest's exit_space criterion); "
        "null = not checked")
    max_index_drop: float = Field(
        0.03, ge=0, description="per budget, mean over the retrieval suites of queries at the budget against a "
        "last-layer index (checked where the served version was measured that way)")


class ReembedSection(BaseModel):
    """After promotion, embed a corpus with the new version (what ``mipic embed`` does)."""

    model_config = ConfigDict(extra="forbid")

    input: Path = Field(description="JSONL, CSV or Parquet, one text a row")
    output: Path = Field(description="Parquet or .npy; '{version}' in the path becomes the promoted version")
    budgets: list[str] = Field(default_factory=lambda: ["384:6"], min_length=1, description="DIM:LAYER each")
    embedding_type: Literal["float", "int8", "uint8", "binary", "ubinary"] = "float"
    text_field: str = "text"
    id_field: str | None = None
    on_error: Literal["raise", "skip"] = "raise"

    def output_for(self, version: str) -> Path:
        return Path(str(self.output).replace("{version}", version))


class RetrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    repo: Path = Path("models/all-minilm-l6-v2")
    work_dir: Path = Path("runs/retrain")
    train_config: Path = Path("configs/mipic_minilm.yaml")
    train_overrides: list[str] = Field(default_factory=list)
    heads: Literal["auto", "distill", "pca", "none"] = Field(
        "auto", description="Exit heads of the candidate: auto = the ones trained with it (model.heads_init), "
        "else fitted on its exported graphs (distill); pca; none"
    )
    eval: EvalSection = Field(default_factory=EvalSection)
    gate: GateSection = Field(default_factory=GateSection)
    promote: bool = True
    reload_url: str | None = Field(
        None, description="Optional server URL to POST /admin/reload after promotion (token: MIPIC_ADMIN_TOKEN)"
    )
    reembed: ReembedSection | None = Field(None, description="Optional: re-embed a corpus after promotion")


def load_retrain_config(path: Path, overrides: Sequence[str] = ()) -> RetrainConfig:
    from mipic.training.config import apply_overrides

    data = yaml.safe_load(Path(path).read_text()) or {}
    return RetrainConfig.model_validate(apply_overrides(data, overrides))


def plan(cfg: RetrainConfig) -> list[str]:
    """What a run of ``cfg`` would do (``mipic retrain --dry-run``), after checking what can be checked without
    running or writing anything: the training config loads with its overrides, the eval files exist, the
    repository's CURRENT pointer can be followed. Raises ``ValueError`` (a bad training config or eval
    section), ``FileNotFoundError`` (an eval file) or ``RepositoryError`` (a bad pointer)."""
    from mipic.training.config import load_config

    tcfg = load_config(cfg.train_config, cfg.train_overrides)
    e = cfg.eval
    files = {"pairs": e.pairs, "pair_labels": e.pair_labels, "retrieval": e.retrieval,
             "classification": e.classification}
    missing = [f"eval.{k}={v}" for k, v in files.items() if v is not None and not Path(v).exists()]
    if missing:
        raise FileNotFoundError(f"eval data not found: {', '.join(missing)}")
    suites = (["the built-in suites"] if e.builtin else []) + [f"{k} {v}" for k, v in files.items() if v is not None]
    if not suites:
        raise ValueError("eval: nothing to evaluate (builtin is false and no eval files are given)")
    repo = ModelRepository(cfg.repo)
    served = repo.current() if repo.path.is_dir() else None
    version = repo.next_version()
    overrides = f" with {' '.join(cfg.train_overrides)}" if cfg.train_overrides else ""
    g = cfg.gate
    gate = (f"drops at most {g.max_drop} per budget (mean of the suites), {g.max_suite_drop} per suite (mean of "
            f"the budgets), {g.max_cell_drop} in any one cell")
    gate += f", {g.max_index_drop} per budget against a last-layer index"
    if g.min_exit_cosine is not None:
        gate += f"; exits share one space (cosine to the last layer >= {g.min_exit_cosine} at every budget)"
    if g.must_improve:
        gate += f"; {', '.join(g.must_improve)} must gain more than {g.min_gain}"
    promote = f"6. promote: CURRENT -> {version}" if cfg.promote else "6. promote: off (promote: false)"
    if cfg.promote and cfg.reload_url:
        promote += f", then POST {cfg.reload_url.rstrip('/')}/admin/reload"
    r = cfg.reembed
    reembed = "7. re-embed: off (no reembed section)" if r is None else (
        f"7. re-embed: {r.input} -> {r.output_for(version)} at {', '.join(r.budgets)} ({r.embedding_type})"
        if cfg.promote else "7. re-embed: off (runs after promotion only)")
    return [
        f"repository {cfg.repo}: serving {f'version {served}' if served else 'nothing yet'}; "
        f"the candidate becomes version {version}",
        f"run directory {cfg.work_dir}/<run id> (state.json; --run-id resumes a run)",
        f"1. train: {cfg.train_config} (objective {tcfg.objective}){overrides}",
        f"2. export: staged ONNX with the PyTorch parity check; exit heads: {cfg.heads}",
        f"3. evaluate candidate and served version on {', '.join(suites)} ({e.max_items} items each)",
        f"4. gate: {gate}",
        f"5. register: version {version}",
        promote,
        reembed,
    ]


class GateFailed(RuntimeError):
    """The candidate is worse than the served version by the gate's rules; nothing was promoted."""


class Pipeline:
    def __init__(self, cfg: RetrainConfig, run_id: str | None = None,
                 train_fn: Callable[[Any], Any] | None = None) -> None:
        self.cfg = cfg
        self.repo = ModelRepository(cfg.repo)
        self.run_id = run_id or time.strftime("%Y%m%d-%H%M%S")
        self.dir = Path(cfg.work_dir) / self.run_id
        self.dir.mkdir(parents=True, exist_ok=True)
        self.state_path = self.dir / "state.json"
        self.state: dict[str, Any] = json.loads(self.state_path.read_text()) if self.state_path.is_file() else {}
        self._train_fn = train_fn

    # ------------------------------------------------------------------ driver

    def run(self) -> dict[str, Any]:
        (self.dir / "retrain_config.yaml").write_text(yaml.safe_dump(self.cfg.model_dump(mode="json")))
        for step in STEPS:
            if step in self.state.get("done", []):
                logger.info("[%s] %s: already done, skipping", self.run_id, step)
                continue
            if step == "promote" and not self.cfg.promote:
                logger.info("[%s] promote: disabled in config; version %s stays registered only",
                            self.run_id, self.state.get("version"))
                break
            if step == "reembed" and self.cfg.reembed is None:
                continue
            logger.info("[%s] %s: starting", self.run_id, step)
            t0 = time.perf_counter()
            outputs = getattr(self, f"_{step}")()
            self.state.update(outputs or {})
            self.state.setdefault("done", []).append(step)
            self.state.setdefault("seconds", {})[step] = round(time.perf_counter() - t0, 1)
            self._save()
            logger.info("[%s] %s: done in %.1f s %s", self.run_id, step, time.perf_counter() - t0, outputs or "")
        return self.state

    def _save(self) -> None:
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state, indent=2, default=str))
        tmp.replace(self.state_path)

    # ------------------------------------------------------------------ steps

    def _train(self) -> dict[str, Any]:
        from mipic.training.config import load_config

        overrides = [*self.cfg.train_overrides, f"train.output_dir={self.dir / 'train'}", "export.enabled=false"]
        tcfg = load_config(self.cfg.train_config, overrides)
        if self._train_fn is None:
            from mipic.training.trainer import train

            result = train(tcfg)
        else:
            result = self._train_fn(tcfg)
        return {"checkpoint": str(result.final_dir)}

    def _export(self) -> dict[str, Any]:
        from mipic.training.release import export_options_for, export_with_heads, heads_choice

        current = self.repo.current()
        name = load_manifest(self.repo.version_dir(current), verify=False).name if current else self.repo.path.name
        version = self.repo.next_version()
        ckpt = Path(self.state["checkpoint"])
        out = self.dir / "export"
        options = export_options_for(ckpt, name=name, version=version, source={"retrain_run": self.run_id})
        export_with_heads(ckpt, out, options, heads_choice(ckpt, self.cfg.heads), budget_items=None)
        return {"export_dir": str(out), "version": version, "name": name}

    def _evaluate(self) -> dict[str, Any]:
        from mipic.training.evaluation.command import eval_command

        e = self.cfg.eval

        def score(model_dir: Path, out: Path) -> dict[str, Any]:
            result = eval_command(
                str(model_dir), out, pairs=e.pairs, pair_labels=e.pair_labels, retrieval=e.retrieval,
                classification=e.classification, builtin=e.builtin, layers=e.layers, dims=e.dims,
                max_items=e.max_items, max_length=e.max_length,
            )
            return result.to_dict()

        candidate = score(Path(self.state["export_dir"]), self.dir / "eval_candidate")
        served = self.repo.current()
        baseline = score(self.repo.version_dir(served), self.dir / "eval_served") if served else None
        # the manifest carries its own scores per budget (the files' checksums do not change)
        from mipic.training.evaluation.result import GridResult
        from mipic.training.release import budget_scores, measure_budgets

        export_dir = Path(self.state["export_dir"])
        grid = GridResult.from_dict(candidate)
        scores, index_scores, index_suites, cosines = budget_scores(grid)
        table = measure_budgets(export_dir, scores=scores, suites=dict(grid.main_metrics), max_items=e.max_items,
                                index_scores=index_scores, index_suites=index_suites, cosine_to_last=cosines)
        manifest = load_manifest(export_dir)
        write_manifest(export_dir, manifest.model_copy(update={"eval": grid.by_budget(), "budgets": table}))
        (self.dir / "eval_candidate.json").write_text(json.dumps(candidate))
        if baseline is not None:
            (self.dir / "eval_served.json").write_text(json.dumps(baseline))
        return {"served_version_at_eval": served}

    def _gate(self) -> dict[str, Any]:
        from mipic.training.evaluation.result import GridResult

        candidate = GridResult.from_dict(json.loads((self.dir / "eval_candidate.json").read_text()))
        served_file = self.dir / "eval_served.json"
        if not served_file.is_file():
            return {"gate": "passed (nothing served yet)"}
        served = GridResult.from_dict(json.loads(served_file.read_text()))
        report = quality_gate(candidate, served, self.cfg.gate)
        (self.dir / "gate.json").write_text(json.dumps(report, indent=2))
        if report["failures"]:
            raise GateFailed("; ".join(report["failures"][:5]) + ("" if len(report["failures"]) <= 5 else " ..."))
        return {"gate": "passed"}

    def _register(self) -> dict[str, Any]:
        version = self.state["version"]
        if version not in self.repo.versions():
            self.repo.register(Path(self.state["export_dir"]), version)
        return {"registered": version}

    def _promote(self) -> dict[str, Any]:
        version = self.state["version"]
        self.repo.promote(version)
        if self.cfg.reload_url:
            import httpx

            token = os.environ.get("MIPIC_ADMIN_TOKEN", "")
            r = httpx.post(self.cfg.reload_url.rstrip("/") + "/admin/reload",
                           headers={"authorization": f"Bearer {token}"}, timeout=120)
            logger.info("reload at %s answered %s %s", self.cfg.reload_url, r.status_code, r.text[:200])
        return {"promoted": version}

    def _reembed(self) -> dict[str, Any]:
        """The corpus with the promoted version; an interrupted step resumes from its parts on a re-run."""
        from mipic.corpus.embedder import EmbedJob
        from mipic.corpus.inputs import Source, detect_format
        from mipic.corpus.job import embed_corpus, parse_budget

        r = self.cfg.reembed
        assert r is not None
        version = self.state["version"]
        job = EmbedJob(Source(r.input, detect_format(r.input), r.text_field, r.id_field), r.output_for(version),
                       self.repo.path / version, tuple(parse_budget(b) for b in r.budgets), r.embedding_type,
                       on_error=r.on_error)
        result = embed_corpus(job, progress=False)
        return {"reembedded": str(result.output), "reembed_rows": result.rows, "reembed_skipped": result.skipped}


def _mean_main(grid: Any, layer: int, dim: int) -> float:
    values = [grid.value(s, m, layer, dim) for s, m in grid.main_metrics.items()]
    values = [v for v in values if not math.isnan(v)]
    return sum(values) / len(values) if values else math.nan


def quality_gate(candidate: Any, served: Any, gate: GateSection) -> dict[str, Any]:
    """Compare two budget grids on the budgets and main metrics both have (see :class:`GateSection`)."""
    failures: list[str] = []
    layers = [ly for ly in candidate.layers if ly in served.layers]
    dims = [d for d in candidate.dims if d in served.dims]
    suites = [(s, m) for s, m in candidate.main_metrics.items() if s in served.scores]
    cells: dict[tuple[str, int, int], float] = {}  # (suite, layer, dim) → served - candidate
    for suite, metric in suites:
        for layer in layers:
            for dim in dims:
                new, old = candidate.value(suite, metric, layer, dim), served.value(suite, metric, layer, dim)
                if not (math.isnan(new) or math.isnan(old)):
                    cells[(suite, layer, dim)] = old - new
    drops = {f"{s}@d{d}_l{ly}": round(v, 5) for (s, ly, d), v in cells.items()}
    for (suite, layer, dim), drop in cells.items():
        if drop > gate.max_cell_drop:
            failures.append(f"{suite} at dim {dim} layer {layer} dropped {drop:.4f} (> {gate.max_cell_drop})")
    budget_drops: dict[str, float] = {}
    for layer in layers:
        for dim in dims:
            values = [v for (_, ly, d), v in cells.items() if (ly, d) == (layer, dim)]
            if values:
                budget_drops[f"d{dim}_l{layer}"] = round(sum(values) / len(values), 5)
    for key, drop in budget_drops.items():
        if drop > gate.max_drop:
            failures.append(f"{key}: mean over suites dropped {drop:.4f} (> {gate.max_drop})")
    suite_drops: dict[str, float] = {}
    for suite, _ in suites:
        values = [v for (s, _, _), v in cells.items() if s == suite]
        if values:
            suite_drops[suite] = round(sum(values) / len(values), 5)
    for suite, drop in suite_drops.items():
        if drop > gate.max_suite_drop:
            failures.append(f"{suite}: mean over budgets dropped {drop:.4f} (> {gate.max_suite_drop})")
    gains: dict[str, float] = {}
    for key in gate.must_improve:
        dim_s, layer_s = key.removeprefix("d").split("_l")
        dim, layer = int(dim_s), int(layer_s)
        gain = _mean_main(candidate, layer, dim) - _mean_main(served, layer, dim)
        gains[key] = round(gain, 5)
        if not gain > gate.min_gain:
            failures.append(f"{key} must improve by more than {gate.min_gain}: gained {gain:+.4f}")
    cross = cross_exit_gate(candidate, served, gate, layers, dims, failures)
    return {"failures": failures, "max_drop": max(budget_drops.values(), default=0.0),
            "max_cell_drop": max(cells.values(), default=0.0), "budget_drops": budget_drops,
            "suite_drops": suite_drops, "gains": gains, "drops": drops, **cross}


def cross_exit_gate(candidate: Any, served: Any, gate: GateSection, layers: list[int], dims: list[int],
                    failures: list[str]) -> dict[str, Any]:
    """The compatibility bounds (issue 18): the candidate's exits share one space (``min_exit_cosine``), and
    queries at each budget against a last-layer index lose at most ``max_index_drop`` against the served
    version (mean over the retrieval suites both measured that way). Appends to ``failures``."""
    from mipic.training.evaluation.result import EXIT_COSINE, EXITS_SUITE, INDEX_PREFIX

    out: dict[str, Any] = {}
    cosines = candidate.scores.get(EXITS_SUITE, {}).get(EXIT_COSINE)
    if gate.min_exit_cosine is not None:
        if cosines is None:
            failures.append("the candidate was not measured across exits (no exits/cosine_to_last): cannot tell "
                            "whether its exits share one space")
        else:
            worst, where = math.inf, ""
            for i, layer in enumerate(candidate.layers):
                for j, dim in enumerate(candidate.dims):
                    v = cosines[i][j]
                    if not math.isnan(v) and v < worst:
                        worst, where = v, f"d{dim}_l{layer}"
            out["worst_exit_cosine"] = {where: round(worst, 5)}
            if worst < gate.min_exit_cosine:
                failures.append(f"exits do not share one space: mean cosine to the last layer at {where} is "
                                f"{worst:.4f} (< {gate.min_exit_cosine})")
    index = [(s, INDEX_PREFIX + m) for s, m in candidate.main_metrics.items()
             if INDEX_PREFIX + m in candidate.scores.get(s, {}) and INDEX_PREFIX + m in served.scores.get(s, {})]
    index_drops: dict[str, float] = {}
    for layer in layers:
        for dim in dims:
            values = [served.value(s, m, layer, dim) - candidate.value(s, m, layer, dim) for s, m in index]
            values = [v for v in values if not math.isnan(v)]
            if values:
                index_drops[f"d{dim}_l{layer}"] = round(sum(values) / len(values), 5)
    for key, drop in index_drops.items():
        if drop > gate.max_index_drop:
            failures.append(f"{key}: queries against a last-layer index dropped {drop:.4f} (> {gate.max_index_drop})")
    out["index_drops"] = index_drops
    return out


def cleanup(run_dir: Path) -> None:
    shutil.rmtree(run_dir, ignore_errors=True)
