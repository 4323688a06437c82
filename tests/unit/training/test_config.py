"""TrainConfig: YAML loading, dotted overrides, validation messages, save/load round trip."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mipic.training.config import (
    CONFIG_FILE,
    TrainConfig,
    apply_overrides,
    load_config,
    parse_override,
    save_config,
)

CONFIGS = Path(__file__).resolve().parents[3] / "configs"
MINILM_CONFIGS = ["mipic_minilm.yaml", "mrl_minilm.yaml", "adaptive_layer_minilm.yaml", "infonce_minilm.yaml"]


def test_defaults() -> None:
    cfg = load_config()
    assert cfg == TrainConfig()
    assert cfg.objective == "mipic"
    assert cfg.model.base is None  # → packaged MiniLM at train time
    assert cfg.data.max_length == 64  # the library default; the MiniLM recipe sets 128
    assert cfg.export.enabled is False


@pytest.mark.parametrize("name", [*MINILM_CONFIGS, "tiny_smoke.yaml"])
def test_shipped_configs_load(name: str) -> None:
    cfg = load_config(CONFIGS / name)
    assert cfg.train.max_steps >= 1


def test_minilm_configs_compare_like_with_like() -> None:
    """The comparison is fair only if every variant sees the same data, steps, batch and lr."""
    cfgs = {name: load_config(CONFIGS / name) for name in MINILM_CONFIGS}
    shared = {(c.seed, c.data.model_dump_json(), c.train.max_steps, c.train.batch_size, c.train.lr, c.train.warmup_steps,
               c.loss.temperature) for c in cfgs.values()}
    assert len(shared) == 1
    assert {c.objective for c in cfgs.values()} == {"mipic", "mrl", "adaptive_layer", "infonce"}
    assert len({c.train.output_dir for c in cfgs.values()}) == len(cfgs)
    mipic = cfgs["mipic_minilm.yaml"].loss
    assert mipic.alpha == 0.4
    assert mipic.chain == [(32, 2), (64, 3), (128, 4), (256, 5), (384, 6)]


def test_overrides_are_parsed_as_yaml(tmp_path: Path) -> None:
    cfg = load_config(
        CONFIGS / "mipic_minilm.yaml",
        [
            "train.max_steps=50",
            "loss.alpha=0.5",
            "train.lr=1e-4",
            "loss.sia_layers=[2, 3]",
            "loss.chain=[[32, 2], [384, 6]]",
            "model.init=null",
            f"train.output_dir={tmp_path / 'x'}",
            "train.resume=true",
        ],
    )
    assert cfg.train.max_steps == 50
    assert cfg.loss.alpha == 0.5
    assert cfg.train.lr == pytest.approx(1e-4)
    assert cfg.loss.sia_layers == [2, 3]
    assert cfg.loss.chain == [(32, 2), (384, 6)]
    assert cfg.model.init is None
    assert cfg.train.output_dir == tmp_path / "x"
    assert cfg.train.resume is True


def test_override_resume_path() -> None:
    cfg = load_config(None, ["train.resume=runs/x/checkpoint-50"])
    assert cfg.train.resume == Path("runs/x/checkpoint-50")


def test_export_shorthand_and_expansion() -> None:
    assert TrainConfig.model_validate({"export": True}).export.enabled is True
    data = apply_overrides({"export": True}, ["export.name=m"])
    assert data == {"export": {"enabled": True, "name": "m"}}
    cfg = load_config(None, ["export=true", "export.version=7"])
    assert (cfg.export.enabled, cfg.export.version) == (True, "7")


def test_override_does_not_mutate_input() -> None:
    data = {"train": {"max_steps": 3}}
    apply_overrides(data, ["train.max_steps=4"])
    assert data == {"train": {"max_steps": 3}}


@pytest.mark.parametrize("bad", ["train.max_steps", "=3", "train..lr=1", "a.=1"])
def test_parse_override_rejects_malformed(bad: str) -> None:
    with pytest.raises(ValueError, match=r"override must look like section\.key=value"):
        parse_override(bad)


def test_override_into_a_scalar_is_refused() -> None:
    with pytest.raises(ValueError, match=r"override 'seed.x=1': seed is not a section"):
        apply_overrides({"seed": 3}, ["seed.x=1"])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.max_stepz=5", r"train\.max_stepz: Extra inputs are not permitted"),
        ("losss.alpha=0.5", r"losss: Extra inputs are not permitted"),
        ("loss.alpha=1.5", r"loss\.alpha: Input should be less than or equal to 1"),
        ("objective=simcse", r"objective: Input should be 'none', 'infonce', 'mrl', 'adaptive_layer', 'mipic' or 'distill'"),
        ("train.batch_size=1", r"train\.batch_size: Input should be greater than or equal to 2"),
    ],
)
def test_invalid_values_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_config(CONFIGS / "tiny_smoke.yaml", [override])


def test_fp16_and_bf16_are_exclusive() -> None:
    with pytest.raises(ValueError, match="fp16 and bf16 are mutually exclusive"):
        load_config(None, ["train.fp16=true", "train.bf16=true"])


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="the top level must be a mapping"):
        load_config(path)


@pytest.mark.parametrize("name", MINILM_CONFIGS)
def test_save_load_round_trip(tmp_path: Path, name: str) -> None:
    cfg = load_config(CONFIGS / name, ["train.max_steps=7", "export=true", f"model.base={tmp_path}"])
    path = save_config(cfg, tmp_path)
    assert path == tmp_path / CONFIG_FILE
    assert load_config(path) == cfg
    # Plain YAML types only, so the file is readable without our classes.
    assert yaml.safe_load(path.read_text())["loss"] == cfg.to_dict()["loss"]


def test_loss_hyperparameters_are_spelled_once() -> None:
    """Each loss default lives in its constructor; the config section reads it and build_objective passes
    every constructor argument by name (a missing config field is an error, not a silent default)."""
    import inspect

    from mipic.training.config import LossSection
    from mipic.training.losses import AdaptiveLayerMatryoshkaLoss, MatryoshkaInfoNCELoss, MIPICLoss
    from mipic.training.model import _by_name

    section = LossSection()
    for loss in (MIPICLoss, AdaptiveLayerMatryoshkaLoss, MatryoshkaInfoNCELoss):
        for name, param in inspect.signature(loss).parameters.items():
            if name in LossSection.model_fields and param.default is not inspect.Parameter.empty:
                assert getattr(section, name) == param.default, (loss.__name__, name)
    changed = section.model_copy(update={"alpha": 0.25, "sia_k_min": 3})
    kwargs = _by_name(MIPICLoss, changed, skip={"hidden_size", "dims", "chain", "sia_layers", "mrl_weights"})
    assert kwargs["alpha"] == 0.25 and kwargs["sia_k_min"] == 3

    def new_loss(dims: list[int], brand_new_knob: float = 1.0) -> None: ...

    with pytest.raises(TypeError, match="brand_new_knob"):
        _by_name(new_loss, section, skip={"dims"})
