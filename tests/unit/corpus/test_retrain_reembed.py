"""The retrain pipeline's optional last step: the corpus re-embedded with the promoted version equals what
`mipic embed` writes with that version; the plan lists it; without the section the step does not run."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from mipic.corpus.embedder import EmbedJob
from mipic.corpus.inputs import Source
from mipic.corpus.job import embed_corpus
from mipic.modeldir.repository import ModelRepository
from mipic.training.pipeline import Pipeline, RetrainConfig, plan
from tests.unit.corpus.test_embed import texts


@pytest.fixture
def promoted(tmp_path: Path, tiny_model_dir: Path) -> ModelRepository:
    repo = ModelRepository(tmp_path / "models" / "tiny")
    repo.register(tiny_model_dir, "1")
    repo.promote("1")
    return repo


def test_reembed_after_promotion(tmp_path: Path, promoted: ModelRepository) -> None:
    src = tmp_path / "corpus.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts(25, 5)))
    cfg = RetrainConfig(repo=promoted.path, work_dir=tmp_path / "runs", train_config=Path("configs/tiny_smoke.yaml"),
                        reembed={"input": src, "output": tmp_path / "index-v{version}.parquet",  # type: ignore[arg-type]
                                 "budgets": ["8:1", "32:3"]})
    # the plan names the candidate's version (2); the run below re-embeds with version 1, promoted already
    assert plan(cfg)[-1] == f"7. re-embed: {src} -> {tmp_path / 'index-v2.parquet'} at 8:1, 32:3 (float)"
    pipeline = Pipeline(cfg, run_id="r")
    pipeline.state = {"version": "1", "done": ["train", "export", "evaluate", "gate", "register", "promote"]}
    state = pipeline.run()
    assert state["done"][-1] == "reembed" and state["reembed_rows"] == 25
    direct = embed_corpus(EmbedJob(Source(src, "jsonl"), tmp_path / "direct.parquet", promoted.path / "1",
                                   ((8, 1), (32, 3))), progress=False)
    assert direct.rows == 25
    assert pq.read_table(tmp_path / "index-v1.parquet").equals(pq.read_table(tmp_path / "direct.parquet"))


def test_no_reembed_section_no_step(tmp_path: Path, promoted: ModelRepository) -> None:
    cfg = RetrainConfig(repo=promoted.path, work_dir=tmp_path / "runs", train_config=Path("configs/tiny_smoke.yaml"))
    assert plan(cfg)[-1] == "7. re-embed: off (no reembed section)"
    pipeline = Pipeline(cfg, run_id="r")
    pipeline.state = {"version": "1", "done": ["train", "export", "evaluate", "gate", "register", "promote"]}
    assert pipeline.run()["done"][-1] == "promote"
