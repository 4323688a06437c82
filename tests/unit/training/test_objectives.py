"""Objectives as a registry: each builds its losses from its own config section (the numbers a config gives are
the weights the losses apply), and a new objective is one loss class, one config section and one registry line
(shown with a toy objective that trains a few steps on the tiny model)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from pydantic import Field  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from tests.conftest import training_sentences  # noqa: E402
from torch import nn  # noqa: E402

from mipic.training.config import (  # noqa: E402
    AdaptiveLayerSection,
    DistillOnlySection,
    InfoNCESection,
    MIPICSection,
    MRLSection,
    NoObjective,
    ObjectiveSection,
    TrainConfig,
    load_config,
)
from mipic.training.losses import (  # noqa: E402
    AdaptiveLayerMatryoshkaLoss,
    EncoderOutputs,
    InfoNCELoss,
    LossOutput,
    MatryoshkaInfoNCELoss,
    cosine_logits,
)
from mipic.training.model import SimCSEModel, build_model, load_encoder  # noqa: E402
from mipic.training.objectives import OBJECTIVES, build_objective, trained_budgets  # noqa: E402
from mipic.training.trainer import LOG_FILE, SentenceCollator, train  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[3] / "configs"

pytestmark = pytest.mark.usefixtures("torch_one_thread")




def forward_once(cfg: TrainConfig) -> tuple[SimCSEModel, dict[str, Any], tuple[EncoderOutputs, EncoderOutputs]]:
    """The model ``cfg`` builds on the tiny encoder, its output on a fixed batch of pairs (dropout off, so both
    passes are deterministic), and the two views its losses saw."""
    encoder, tokenizer = load_encoder(cfg.model)
    torch.manual_seed(0)
    model = build_model(cfg, encoder).eval()
    texts = training_sentences(8, seed=3)
    batch = SentenceCollator(tokenizer, 16)([{"text": t, "pos": " ".join(t.split()[:3])} for t in texts])
    with torch.no_grad():
        out = model(**batch)
        readout = model.heads
        a = EncoderOutputs(tuple(model.encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                               output_hidden_states=True).hidden_states),
                           batch["attention_mask"], readout)
        b = EncoderOutputs(tuple(model.encoder(input_ids=batch["pos_input_ids"],
                                               attention_mask=batch["pos_attention_mask"],
                                               output_hidden_states=True).hidden_states),
                           batch["pos_attention_mask"], readout)
    return model, out, (a, b)


def tiny_config(base: Path, *overrides: str) -> TrainConfig:
    return load_config(CONFIGS / "tiny_smoke.yaml", [f"model.base={base}", "model.dropout=0.0", *overrides])


# --------------------------------------------------------------------------- the same numbers


def test_mipic_total_is_the_configured_combination(tiny_torch_model: Any, heads_file: Path) -> None:
    """Every weight of the config reaches its term: the total equals the MIPIC equation evaluated with the config's
    numbers on the terms the model logs, and the MRL term equals the loss built by hand from the config."""
    _, _, base = tiny_torch_model
    cfg = tiny_config(base, "loss.alpha=0.3", "loss.w_sia=0.7", "loss.w_pic=1.3", "loss.w_scr=0.2", "loss.w_sir=0.05",
                      "loss.weights=[1.0, 0.5, 2.0]", "loss.temperature=0.07", "distill.weight=1.5",
                      "distill.anchor_weight=0.8", "distill.align_weight=3.0", f"model.heads_init={heads_file}")
    _, out, (a, b) = forward_once(cfg)
    t, loss, distill = out["terms"], cfg.loss, cfg.distill
    assert isinstance(loss, MIPICSection)
    expected = (loss.alpha * t["mrl"] + (1 - loss.alpha) * (loss.w_sia * t["sia"] + loss.w_pic * t["pic"])
                + loss.w_scr * t["scr"] + loss.w_sir * t["sir"]
                + distill.weight * (t["distill_kl"] + distill.anchor_weight * t["distill_anchor"]
                                    + distill.align_weight * t["distill_align"]))
    assert float(out["loss"]) == pytest.approx(expected, rel=1e-5)
    mrl = MatryoshkaInfoNCELoss([8, 16, 32], weights=[1.0, 0.5, 2.0], temperature=0.07)
    with torch.no_grad():
        assert t["mrl"] == pytest.approx(float(mrl(a.pooled(3), b.pooled(3))), rel=1e-5)


@pytest.mark.parametrize("name", ["infonce", "mrl", "adaptive_layer"])
def test_each_objective_computes_its_formula_from_its_section(tiny_torch_model: Any, name: str) -> None:
    _, _, base = tiny_torch_model
    sections = {
        "infonce": "{objective: infonce, temperature: 0.1, symmetric: true}",
        "mrl": "{objective: mrl, dims: [8, 32], weights: [2.0, 0.5], temperature: 0.2}",
        "adaptive_layer": "{objective: adaptive_layer, dims: [16, 32], layers: [2, 3], kl_weight: 0.4, "
                          "kl_temperature: 0.5, layer_weighting: linear}",
    }
    cfg = tiny_config(base, f"loss={sections[name]}")
    _, out, (a, b) = forward_once(cfg)
    by_hand: nn.Module = {
        "infonce": InfoNCELoss(temperature=0.1, symmetric=True),
        "mrl": MatryoshkaInfoNCELoss([8, 32], weights=[2.0, 0.5], temperature=0.2),
        "adaptive_layer": AdaptiveLayerMatryoshkaLoss([16, 32], [2, 3], kl_weight=0.4, kl_temperature=0.5,
                                                      layer_weighting="linear"),
    }[name]
    with torch.no_grad():
        value = by_hand(a.pooled_all(), b.pooled_all()) if name == "adaptive_layer" else by_hand(a.pooled(3),
                                                                                                  b.pooled(3))
    assert float(out["loss"]) == pytest.approx(float(value), rel=1e-6)


def test_distillation_alone_weighs_its_terms(tiny_torch_model: Any, heads_file: Path) -> None:
    _, _, base = tiny_torch_model
    cfg = tiny_config(base, "loss={objective: distill}", "distill.weight=2.5", "distill.align_weight=4.0",
                      "distill.layers=[1, 3]", f"model.heads_init={heads_file}")
    model, out, _ = forward_once(cfg)
    assert model.objective is None and model.distill is not None
    assert model.distill.budgets == ((16, 1), (32, 1), (16, 3), (32, 3))  # default dims of hidden 32, its layers
    t = out["terms"]
    assert float(out["loss"]) == pytest.approx(2.5 * (t["distill_kl"] + 4.0 * t["distill_align"]), rel=1e-5)


def test_the_registry_covers_every_section() -> None:
    assert set(OBJECTIVES) == {"none", "distill", "infonce", "mrl", "adaptive_layer", "mipic"}
    for section in (InfoNCESection(), MRLSection(), AdaptiveLayerSection(), MIPICSection(sia_layers=[1], sia_k_min=2)):
        objective = build_objective(section, 32, 3)
        assert objective is not None
        assert isinstance(objective(*views()), LossOutput)
    assert build_objective(NoObjective(), 32, 3) is None and build_objective(DistillOnlySection(), 32, 3) is None


def views() -> tuple[EncoderOutputs, EncoderOutputs]:
    torch.manual_seed(0)
    mask = torch.ones(4, 6, dtype=torch.long)
    return (EncoderOutputs(tuple(torch.randn(4, 6, 32) for _ in range(4)), mask),
            EncoderOutputs(tuple(torch.randn(4, 6, 32) for _ in range(4)), mask))


# --------------------------------------------------------------------------- a new objective


class ToySection(ObjectiveSection):
    """The config section of the toy objective (in config.py: one more member of ``LossConfig``)."""

    objective: Literal["toy"] = "toy"
    layer: int | None = Field(default=None, ge=1, description="The layer trained; None = the last.")
    init_scale: float = Field(default=10.0, gt=0)


class ToyObjective(nn.Module):
    r"""InfoNCE at one layer's full width with a learnable logit scale (CLIP's):
    :math:`\mathcal{L} = \mathrm{CE}(s \cdot \cos(a^{(l)}, b^{(l)}), I)`, :math:`s = e^{\theta}` learnt."""

    def __init__(self, layer: int | None, init_scale: float) -> None:
        super().__init__()
        self.layer = layer
        self.log_scale = nn.Parameter(torch.tensor(init_scale).log())

    @classmethod
    def from_config(cls, cfg: ToySection, hidden_size: int, num_layers: int) -> ToyObjective:
        return cls(cfg.layer, cfg.init_scale)

    @classmethod
    def trained_budgets(cls, cfg: ToySection, hidden_size: int, num_layers: int) -> list[tuple[int, int]]:
        return [(hidden_size, cfg.layer or num_layers)]

    def forward(self, view_a: EncoderOutputs, view_b: EncoderOutputs) -> LossOutput:
        layer = self.layer or view_a.num_layers
        logits = cosine_logits(view_a.pooled(layer), view_b.pooled(layer), 1.0) * self.log_scale.exp()  # (B, B)
        value = nn.functional.cross_entropy(logits, torch.arange(logits.shape[0]))
        return LossOutput(loss=value, terms={"toy": float(value.detach()), "total": float(value.detach())})


class ToyTrainConfig(TrainConfig):
    """TrainConfig whose loss union also holds the toy's section: in config.py, one more member of ``LossConfig``."""

    loss: Annotated[
        NoObjective | DistillOnlySection | InfoNCESection | MRLSection | AdaptiveLayerSection | MIPICSection
        | ToySection,
        Field(discriminator="objective"),
    ] = Field(default_factory=ToySection)


def test_a_new_objective_is_a_loss_a_section_and_a_registry_line(
    tiny_torch_model: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(OBJECTIVES, "toy", ToyObjective)  # the registry line
    _, _, base = tiny_torch_model
    data = tiny_config(base).to_dict()
    data["loss"] = {"objective": "toy", "layer": 2, "init_scale": 5.0}
    data["train"].update({"output_dir": str(tmp_path / "run"), "max_steps": 6, "save_steps": 3})
    cfg = ToyTrainConfig.model_validate(data)
    assert isinstance(cfg.loss, ToySection) and cfg.objective == "toy"
    result = train(cfg, sentences=training_sentences(64))
    assert result.global_step == 6
    steps = json.loads((result.final_dir / LOG_FILE).read_text())["steps"]
    assert [set(s) for s in steps] == [{"step", "toy", "total"}] * 6
    assert sum(s["toy"] for s in steps[-2:]) < sum(s["toy"] for s in steps[:2])  # it trains
    # its parameter is optimised and checkpointed with the encoder, under the objective's prefix
    state = load_file(str(result.output_dir / "checkpoint-6" / "model.safetensors"))
    assert float(state["objective.log_scale"]) != pytest.approx(float(torch.tensor(5.0).log()))
    # the run saves the toy's section, and the manifest's budgets come from the toy
    assert ToyTrainConfig.model_validate(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert trained_budgets(cfg, 32, 3) == [(32, 2)]
    with_distill = cfg.model_copy(update={"distill": cfg.distill.model_copy(update={"weight": 1.0, "layers": [1]})})
    assert trained_budgets(with_distill, 32, 3) == [(16, 1), (32, 1), (32, 2)]


def test_an_unregistered_objective_is_named() -> None:
    with pytest.raises(ValueError, match=r"objective 'toy' is not registered \(known: none, distill, infonce"):
        build_objective(ToySection(), 32, 3)
