"""Retrain pipeline on a tiny model: gate pass → registered and promoted; gate fail → nothing served changes;
finished steps are skipped on resume."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from mipic.modeldir.repository import ModelRepository
from mipic.training.pipeline import GateFailed, GateSection, Pipeline, RetrainConfig, quality_gate

WORDS = ["the", "a", "cat", "dog", "fox", "quick", "brown", "lazy", "jumps", "over", "embed", "layer", "dim", "model", "text", "short", "long"]


@pytest.fixture
def setup(tmp_path: Path, tiny_model_dir: Path, tiny_torch_model):  # type: ignore[no-untyped-def]
    _, _, ckpt = tiny_torch_model
    repo = ModelRepository(tmp_path / "models" / "tiny")
    repo.register(tiny_model_dir)
    repo.promote("1")
    rng = random.Random(0)
    sentences = tmp_path / "sentences.txt"
    sentences.write_text("\n".join(" ".join(rng.choice(WORDS) for _ in range(6)) for _ in range(64)))
    cls = tmp_path / "cls.jsonl"
    with cls.open("w") as f:
        for i in range(40):
            label = i % 2
            words = ["cat", "dog"] if label else ["fox", "model"]
            f.write(json.dumps({"text": " ".join(rng.choice(words) for _ in range(4)), "label": label}) + "\n")
    cfg = RetrainConfig(
        repo=repo.path,
        work_dir=tmp_path / "runs",
        train_config=Path("configs/tiny_smoke.yaml"),
        train_overrides=[f"model.base={ckpt}", f"data.train_file={sentences}", "train.max_steps=2",
                         "train.save_steps=100"],
        eval={"builtin": False, "classification": cls, "max_items": 40, "max_length": 16},  # type: ignore[arg-type]
        gate={"max_drop": 1.0},  # type: ignore[arg-type]
    )
    return repo, cfg


def test_pipeline_promotes_a_candidate_that_passes_the_gate(setup) -> None:  # type: ignore[no-untyped-def]
    repo, cfg = setup
    state = Pipeline(cfg, run_id="ok").run()
    assert state["done"] == ["train", "export", "evaluate", "gate", "register", "promote"]
    assert repo.versions() == ["1", "2"] and repo.current() == "2"
    manifest = repo.verify("2")
    assert manifest.name == "tiny" and manifest.eval  # scores per budget travel with the version
    assert "d8_l1" in manifest.eval and "cls/accuracy" in manifest.eval["d8_l1"]
    # resume: a rerun of the same run id does nothing again
    calls: list[object] = []
    again = Pipeline(cfg, run_id="ok", train_fn=lambda c: calls.append(c)).run()
    assert calls == [] and again["done"] == state["done"]


def test_gate_failure_leaves_the_served_version(setup) -> None:  # type: ignore[no-untyped-def]
    repo, cfg = setup
    cfg = cfg.model_copy(update={"gate": GateSection(max_drop=1.0, must_improve=["d8_l1"], min_gain=0.99)})
    with pytest.raises(GateFailed, match="d8_l1 must improve"):
        Pipeline(cfg, run_id="bad").run()
    assert repo.current() == "1" and repo.versions() == ["1"]
    gate = json.loads((cfg.work_dir / "bad" / "gate.json").read_text())
    assert gate["failures"] and "d8_l1" in gate["gains"]


def test_quality_gate_rules() -> None:
    from mipic.training.evaluation.result import GridResult

    def grid(v: float) -> GridResult:  # exits measured and shared: only the quality rules are at play here
        return GridResult(model="m", layers=[1, 2], dims=[8, 16], main_metrics={"s": "acc"},
                          scores={"s": {"acc": [[v, v], [v, v + 0.1]]}, "exits": {"cosine_to_last": [[0.9] * 2] * 2}})

    assert quality_gate(grid(0.5), grid(0.5), GateSection(max_drop=0.0))["failures"] == []
    report = quality_gate(grid(0.47), grid(0.5), GateSection(max_drop=0.02, max_suite_drop=0.05))
    assert len(report["failures"]) == 4 and report["max_drop"] == pytest.approx(0.03)  # every budget's mean
    report = quality_gate(grid(0.47), grid(0.5), GateSection(max_drop=0.05, max_suite_drop=0.02))
    assert report["failures"] == ["s: mean over budgets dropped 0.0300 (> 0.02)"]
    report = quality_gate(grid(0.6), grid(0.5), GateSection(max_drop=0.02, must_improve=["d16_l2"]))
    assert report["failures"] == [] and report["gains"]["d16_l2"] == pytest.approx(0.1)


def test_quality_gate_tolerates_one_noisy_cell_but_not_a_real_drop() -> None:
    from mipic.training.evaluation.result import GridResult

    def grid(a: float, b: float) -> GridResult:  # two suites; suite a has one noisy cell
        return GridResult(model="m", layers=[1, 2], dims=[8, 16], main_metrics={"a": "acc", "b": "ndcg@10"},
                          scores={"a": {"acc": [[a, 0.5], [0.5, 0.5]]}, "b": {"ndcg@10": [[b, b], [b, b]]}})

    served = grid(0.5, 0.5)
    gate = GateSection(max_drop=0.02, max_suite_drop=0.01, max_cell_drop=0.04, min_exit_cosine=None)
    # one sentiment-like cell 0.03 down, everything else level: within the cell bound; budget mean 0.015 down
    assert quality_gate(grid(0.47, 0.5), served, gate)["failures"] == []
    # a retrieval suite 0.015 down everywhere: each budget's mean drops 0.0075, the suite's mean 0.015 → refused
    report = quality_gate(grid(0.5, 0.485), served, gate)
    assert report["failures"] == ["b: mean over budgets dropped 0.0150 (> 0.01)"]
    assert quality_gate(grid(0.45, 0.5), served, gate)["failures"][0].startswith("a at dim 8 layer 1 dropped 0.05")


def test_quality_gate_refuses_a_candidate_whose_exits_do_not_share_one_space() -> None:
    from mipic.training.evaluation.result import GridResult

    def grid(cos_l1: float, index_l1: float, with_exits: bool = True) -> GridResult:
        scores = {"r": {"ndcg@10": [[0.5, 0.5], [0.7, 0.7]], "index_ndcg@10": [[index_l1, index_l1], [0.7, 0.7]]}}
        if with_exits:
            scores["exits"] = {"cosine_to_last": [[cos_l1, cos_l1 + 0.1], [1.0, 1.0]]}
        return GridResult(model="m", layers=[1, 2], dims=[8, 16], main_metrics={"r": "ndcg@10"}, scores=scores)

    served = grid(0.8, 0.6)
    gate = GateSection()
    assert quality_gate(grid(0.8, 0.6), served, gate)["failures"] == []
    report = quality_gate(grid(0.2, 0.6), served, gate)  # same-budget quality unchanged, exits unrelated
    assert report["failures"] == ["exits do not share one space: mean cosine to the last layer at d8_l1 is "
                                  "0.2000 (< 0.5)"]
    assert report["worst_exit_cosine"] == {"d8_l1": 0.2}
    report = quality_gate(grid(0.8, 0.5), served, gate)  # a shallow query against the index got worse
    assert report["failures"] == ["d8_l1: queries against a last-layer index dropped 0.1000 (> 0.03)",
                                  "d16_l1: queries against a last-layer index dropped 0.1000 (> 0.03)"]
    assert report["index_drops"]["d8_l2"] == 0.0
    report = quality_gate(grid(0.8, 0.6, with_exits=False), served, gate)
    assert report["failures"][0].startswith("the candidate was not measured across exits")
    assert quality_gate(grid(0.2, 0.6), served, GateSection(min_exit_cosine=None))["failures"] == []


def test_retrain_set_overrides_reach_the_training_config() -> None:
    """``mipic retrain --set 'train_overrides=[...]'`` (README): a YAML list of the training config's own overrides,
    applied on top of the retrain config's; other keys of the retrain config are set the same way."""
    from mipic.training.config import load_config
    from mipic.training.pipeline import load_retrain_config

    cfg = load_retrain_config(Path("configs/retrain_minilm.yaml"),
                              ["train_overrides=[seed=43, train.max_steps=7]", "gate.max_drop=0.01"])
    assert cfg.train_overrides == ["seed=43", "train.max_steps=7"]
    assert cfg.gate.max_drop == pytest.approx(0.01)
    tcfg = load_config(cfg.train_config, cfg.train_overrides)
    assert (tcfg.seed, tcfg.train.max_steps) == (43, 7)
    default = load_config(cfg.train_config, load_retrain_config(Path("configs/retrain_minilm.yaml")).train_overrides)
    assert (default.seed, default.train.max_steps) == (42, 6000)
