"""TrainConfig: YAML loading, dotted overrides, validation messages, save/load round trip, the per-objective
loss sections and the flat shape of older runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mipic.training.config import (
    CONFIG_FILE,
    AdaptiveLayerSection,
    DistillOnlySection,
    DistillSection,
    InfoNCESection,
    MIPICSection,
    MRLSection,
    TrainConfig,
    apply_overrides,
    error_path,
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
        ("loss={objective: simcse}", r"loss: Input tag 'simcse' found using 'objective' does not match any of the "
                                     r"expected tags: 'none', 'distill', 'infonce', 'mrl', 'adaptive_layer', 'mipic'"),
        ("loss.kl_weight=2", r"loss\.kl_weight: Extra inputs are not permitted"),  # an adaptive_layer key, not mipic's
        ("distill.weight=-1", r"distill\.weight: Input should be greater than or equal to 0"),
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


# --------------------------------------------------------------------------- the loss sections


def test_each_objective_reads_its_own_section() -> None:
    cfg = load_config(CONFIGS / "mipic_minilm.yaml")
    assert isinstance(cfg.loss, MIPICSection) and cfg.objective == "mipic"
    assert (cfg.distill.weight, cfg.distill.anchor_weight, cfg.distill.align_weight) == (5.0, 4.0, 30.0)
    mrl = load_config(CONFIGS / "mipic_minilm.yaml", ["loss={objective: mrl}", "distill.weight=0"])
    assert mrl.loss == MRLSection() and mrl.objective == "mrl"
    assert mrl.distill.align_weight == 30.0  # the other sections stay as they were
    assert TrainConfig.model_validate({"loss": {"objective": "infonce", "symmetric": True}}).loss == InfoNCESection(
        symmetric=True)


def test_distill_alone_needs_a_distillation_weight() -> None:
    with pytest.raises(ValueError, match=r"objective 'distill' needs distill\.weight > 0"):
        load_config(CONFIGS / "mipic_minilm.yaml", ["loss={objective: distill}", "distill.weight=0"])
    assert load_config(CONFIGS / "mipic_minilm.yaml", ["loss={objective: distill}"]).objective == "distill"


def test_error_path_drops_the_union_tag() -> None:
    data = {"loss": {"objective": "mipic", "alpah": 1}, "distill": {"weight": -1}}
    assert error_path(("loss", "mipic", "alpah"), data) == "loss.alpah"
    assert error_path(("loss", "mipic", "chain", 0, 1), {"loss": {"chain": [[1, 2]]}}) == "loss.chain.0.1"
    assert error_path(("distill", "weight"), {}) == "distill.weight"  # a section the input lacks is still named
    assert error_path((), data) == "<root>"


#: A train_config.yaml as runs before issue 21 wrote it: every objective's keys (and the distillation's) in one
#: flat ``loss`` section, the objective at the top level.
FLAT = {
    "seed": 1, "objective": "infonce",
    "loss": {"dims": [8, 16, 32], "weights": None, "temperature": 0.1, "symmetric": True, "layers": None,
             "layer_weighting": "uniform", "kl_weight": 1.0, "kl_temperature": 0.3, "chain": [[8, 1], [32, 3]],
             "sia_layers": [1, 2], "alpha": 0.4, "w_sia": 1.0, "w_pic": 1.0, "w_scr": 0.1, "w_sir": 0.1,
             "sia_dims": None, "sia_attn_weight": 1.0, "sia_cka_weight": 1.0, "sia_attn_temperature": 1.0,
             "sia_k_min": 8, "sia_gamma": [0.1, 0.5], "sia_kl_direction": "student_teacher", "sia_include_cls": False,
             "pic_projector_hidden": None, "pic_progressive": False, "pic_cross_view": True, "mic_dims": None,
             "sir_t": 2.0, "normalize_terms": False, "ema_decay": 0.99, "distill_weight": 2.0,
             "distill_temperature": 0.07, "distill_layers": [2, 3], "distill_dims": None, "anchor_weight": 1.5,
             "align_weight": 3.0, "align_dim_weighting": "linear"},
}


def test_the_flat_loss_section_of_older_runs_still_loads(tmp_path: Path) -> None:
    """Checkpoints carry the flat shape: it loads as the sections it meant (the objective's keys, the distillation
    keys moved, the other objectives' keys dropped as they were never read), and saves in the current shape."""
    path = tmp_path / CONFIG_FILE
    path.write_text(yaml.safe_dump(FLAT))
    cfg = load_config(path)
    assert cfg.loss == InfoNCESection(temperature=0.1, symmetric=True)
    # distill_dims fell back to the flat dims, which infonce does not read: they move with it
    assert cfg.distill == DistillSection(weight=2.0, temperature=0.07, layers=[2, 3], dims=[8, 16, 32],
                                         anchor_weight=1.5, align_weight=3.0, align_dim_weighting="linear")
    assert load_config(save_config(cfg, tmp_path / "again")) == cfg
    # no objective at all meant mipic; an unknown key is still an error, under the path it was given
    mipic = TrainConfig.model_validate({"loss": {"alpha": 0.2, "kl_weight": 3.0, "distill_weight": 1.0}})
    assert mipic.loss == MIPICSection(alpha=0.2) and mipic.distill.weight == 1.0
    with pytest.raises(ValueError, match=r"loss\.alpah: Extra inputs are not permitted"):
        load_config(path, ["loss.alpah=1"])


def test_a_top_level_objective_override_switches_like_before(tmp_path: Path) -> None:
    """``--set objective=mrl`` (the spelling before issue 21) on a current config keeps the loss keys mrl reads."""
    cfg = load_config(CONFIGS / "tiny_smoke.yaml", ["objective=mrl"])
    assert cfg.loss == MRLSection(dims=[8, 16, 32], temperature=0.05)
    distill = load_config(CONFIGS / "tiny_smoke.yaml", ["objective=distill", "distill.weight=1"])
    assert isinstance(distill.loss, DistillOnlySection) and distill.distill.dims == [8, 16, 32]


def test_loss_defaults_agree_with_the_loss_constructors() -> None:
    """A loss hyperparameter's default is spelled twice: in its config section (config.py has no torch) and beside
    its equation, in the loss's constructor. Pin that they agree: config field → (loss class, parameter)."""
    import inspect

    pytest.importorskip("torch")
    from mipic.training.losses import (
        AdaptiveLayerMatryoshkaLoss,
        InfoNCELoss,
        MatryoshkaInfoNCELoss,
        MIPICLoss,
        PICLoss,
        SelfDistillLoss,
        SIALoss,
        SpectralIsotropyRegularizer,
    )

    def default(loss: type, name: str) -> object:
        return inspect.signature(loss).parameters[name].default

    pairs = {
        InfoNCESection: {"temperature": (InfoNCELoss, "temperature"), "symmetric": (InfoNCELoss, "symmetric")},
        MRLSection: {n: (MatryoshkaInfoNCELoss, n) for n in ("weights", "temperature", "symmetric")},
        AdaptiveLayerSection: {n: (AdaptiveLayerMatryoshkaLoss, n) for n in (
            "weights", "temperature", "symmetric", "layer_weighting", "kl_weight", "kl_temperature")},
        MIPICSection: {
            "weights": (MatryoshkaInfoNCELoss, "weights"), "temperature": (MatryoshkaInfoNCELoss, "temperature"),
            **{n: (MIPICLoss, n) for n in ("alpha", "w_sia", "w_pic", "w_scr", "w_sir", "pic_cross_view",
                                           "normalize_terms", "ema_decay")},
            "sia_attn_weight": (SIALoss, "attn_weight"), "sia_cka_weight": (SIALoss, "cka_weight"),
            "sia_attn_temperature": (SIALoss, "attn_temperature"), "sia_k_min": (SIALoss, "k_min"),
            "sia_kl_direction": (SIALoss, "kl_direction"), "sia_include_cls": (SIALoss, "include_cls"),
            "pic_projector_hidden": (PICLoss, "projector_hidden"), "pic_progressive": (PICLoss, "progressive"),
            "sir_t": (SpectralIsotropyRegularizer, "t"),
        },
        DistillSection: {n: (SelfDistillLoss, n) for n in (
            "temperature", "anchor_weight", "align_weight", "align_dim_weighting")},
    }
    for section, fields in pairs.items():
        for field, (loss, param) in fields.items():
            assert section.model_fields[field].default == default(loss, param), (section.__name__, field)
    assert MIPICSection().sia_gamma == (default(SIALoss, "gamma_min"), default(SIALoss, "gamma_max"))
