"""A model with exit heads over HTTP: /info says so, /budgets ranks the budgets, bad heads never get served."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from tests.conftest import TINY_DIMS, TINY_LAYERS, app_client, make_settings

from mipic.modeldir.heads import HEADS_FILE
from mipic.modeldir.manifest import load_manifest, write_manifest
from mipic.modeldir.repository import ModelRepository
from mipic.modeldir.runner import LoadedModel, Row
from mipic.service.app import create_app
from mipic.service.settings import Settings

TOKEN = "admin-token"


@pytest.fixture(scope="module")
def heads_dir_with_budgets(tiny_heads_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mipic.training.release import measure_budgets, write_budgets

    d = tmp_path_factory.mktemp("with_budgets") / "1"
    shutil.copytree(tiny_heads_model_dir, d)
    # quality rises with width; layer 2 is worse than layer 1, so every layer-2 budget is dominated
    base = {1: 0.3, 2: 0.2, 3: 0.5}
    scores = {(dim, ly): {"s1": base[ly] + dim / 1000, "s2": base[ly]} for ly in range(1, 4) for dim in TINY_DIMS}
    write_budgets(d, measure_budgets(d, scores=scores, suites={"s1": "ap", "s2": "ndcg@10"}, max_items=7))
    return d


@pytest.fixture(scope="module")
def client_settings(heads_dir_with_budgets: Path) -> Settings:
    return make_settings(heads_dir_with_budgets)


def test_info_reports_heads_and_pareto_budgets(client: TestClient) -> None:
    info = client.get("/info").json()
    assert info["heads"]["method"] == "test"
    assert info["heads"]["fitted_budgets"] == [{"dim": 8, "layer": 1}]
    pareto = info["pareto_budgets"]
    assert pareto and all(b["pareto"] for b in pareto)
    # a wider head costs a little more (its rows are computed), so each dim of layers 1 and 3 is on the front
    assert {(b["dim"], b["layer"]) for b in pareto} == {(d, ly) for d in TINY_DIMS for ly in (1, 3)}


def test_budgets_lists_every_budget_cheapest_first(client: TestClient) -> None:
    body = client.get("/budgets").json()
    assert body["available"] and body["suites"] == {"s1": "ap", "s2": "ndcg@10"}
    assert len(body["budgets"]) == TINY_LAYERS * len(TINY_DIMS)
    costs = [b["relative_cost"] for b in body["budgets"]]
    assert costs == sorted(costs) and costs[-1] == 1.0
    assert len(body["stage_ms"]) == TINY_LAYERS + 1 and body["eval_items"] == 7
    assert body["recommended"] is None


def test_budgets_recommends_the_cheapest_that_meets_the_bar(client: TestClient) -> None:
    rec = client.get("/budgets?min_quality=0.31").json()["recommended"]
    assert (rec["dim"], rec["layer"], rec["quality"]) == (32, 1, 0.316)  # 0.3 + 32/2000
    rec = client.get("/budgets?min_quality=0.35").json()["recommended"]
    assert (rec["dim"], rec["layer"]) == (8, 3)
    assert client.get("/budgets?min_quality=0.99").json()["recommended"] is None
    only = client.get("/budgets?pareto_only=true").json()["budgets"]
    assert all(b["pareto"] for b in only) and len(only) == 6


@pytest.mark.parametrize("query", ["min_quality=abc", "min_quality=1.5", "pareto_only=maybe"])
def test_budgets_bad_query_is_400_naming_the_field(client: TestClient, query: str) -> None:
    r = client.get(f"/budgets?{query}")
    assert r.status_code == 400
    assert r.json()["error"]["param"] == query.split("=")[0]


def test_embed_goes_through_the_heads(client: TestClient, heads_dir_with_budgets: Path) -> None:
    got = np.array(client.post("/embed?dim=8&layer=1", json={"inputs": ["the cat"]}).json()["embeddings"][0])
    model = LoadedModel(heads_dir_with_budgets, provider="cpu")
    ref = model.run([Row(ids=model.tokenizer.encode(["the cat"])[0].ids, dim=8, layer=1)])[0]
    np.testing.assert_allclose(got, ref, atol=1e-6)


def test_exit_space_not_measured_says_so(client: TestClient) -> None:
    """A table measured before issue 18 (no cross-exit numbers): the model loads and says it does not know."""
    space = client.get("/info").json()["exit_space"]
    assert space["shared"] is None and "not measured" in space["note"]
    body = client.get("/budgets").json()
    assert body["exit_space"]["shared"] is None and body["index_suites"] == {}
    assert all(b["index_quality"] is None and b["cosine_to_last"] is None for b in body["budgets"])


@pytest.mark.parametrize("cos_l1, shared", [(0.81, True), (0.05, False)])
def test_info_and_budgets_report_the_shared_space(heads_dir_with_budgets: Path, tmp_path: Path,
                                                    cos_l1: float, shared: bool) -> None:
    from mipic.training.release import measure_budgets, write_budgets

    d = tmp_path / "1"
    shutil.copytree(heads_dir_with_budgets, d)
    keys = [(dim, ly) for ly in range(1, TINY_LAYERS + 1) for dim in TINY_DIMS]
    cos = {1: cos_l1, 2: 0.9, 3: 1.0}
    write_budgets(d, measure_budgets(
        d, scores={k: {"r": 0.5} for k in keys}, suites={"r": "ndcg@10"}, max_items=7,
        index_scores={k: {"r": 0.4 + k[1] / 10} for k in keys}, index_suites={"r": "ndcg@10"},
        cosine_to_last={k: cos[k[1]] for k in keys}))
    with app_client(make_settings(d)) as c:
        space = c.get("/info").json()["exit_space"]
        assert space["shared"] is shared and space["worst_cosine"] == cos_l1
        assert space["worst_budget"]["layer"] == 1 and space["min_cosine_required"] == 0.5
        assert ("any (dim, layer)" in space["note"]) is shared
        body = c.get("/budgets").json()
        assert body["index_suites"] == {"r": "ndcg@10"} and body["exit_space"] == space
        row = next(b for b in body["budgets"] if (b["dim"], b["layer"]) == (16, 2))
        assert row["index_quality"] == 0.6 and row["index_scores"] == {"r": 0.6} and row["cosine_to_last"] == 0.9


def test_model_without_heads_or_budgets(tiny_model_dir: Path) -> None:
    with app_client(make_settings(tiny_model_dir)) as c:
        assert c.get("/info").json()["heads"] is None
        assert c.get("/info").json()["exit_space"]["shared"] is None
        body = c.get("/budgets?min_quality=0.5").json()
        assert body["available"] is False and body["budgets"] == [] and body["recommended"] is None


def test_reload_refuses_bad_heads_and_keeps_serving(heads_dir_with_budgets: Path, tmp_path: Path) -> None:
    repo = ModelRepository(tmp_path / "tiny")
    repo.register(heads_dir_with_budgets)
    bad = repo.path / "2"
    shutil.copytree(repo.path / "1", bad)
    w = np.eye(32, dtype=np.float32)[None].repeat(TINY_LAYERS, 0)
    w[0, 0, 0] = np.nan
    np.savez(bad / HEADS_FILE, weight=w, bias=np.zeros((TINY_LAYERS, 32), np.float32))
    write_manifest(bad, load_manifest(bad, verify=False).model_copy(update={"version": "2"}))  # checksums agree
    repo.promote("1")
    app = create_app(make_settings(repo.path, admin_token=TOKEN, watch_interval_s=0))
    with TestClient(app) as c:
        repo.promote("2")
        r = c.post("/admin/reload", headers={"authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 409
        message = r.json()["error"]["message"]
        assert "heads.npz" in message and "NaN" in message and "\n" not in message
        assert str(tmp_path) not in message
        assert c.post("/embed", json={"inputs": "a cat"}).json()["model"] == "tiny@1"
