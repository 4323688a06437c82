"""The budget page's routes (api/routes_ui.py), its files shipping as package data, and /budgets/traffic."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import tomllib
from fastapi.testclient import TestClient
from tests.conftest import make_settings

from mipic.service.api.routes_ui import UI_FILES
from mipic.service.metrics import Metrics
from mipic.service.settings import Settings
from mipic.service.traffic import histogram_quantile, latency_by_budget

ROOT = Path(__file__).resolve().parents[3]
UI_DIR = ROOT / "src" / "mipic" / "service" / "ui"
KEY = "page-must-not-hold-this-key"


@pytest.fixture(scope="module")
def client_settings(tiny_model_dir: Path) -> Settings:
    return make_settings(tiny_model_dir, api_key=KEY)


def test_root_redirects_to_the_page(client: TestClient) -> None:
    r = client.get("/", follow_redirects=False)
    assert r.status_code == 307 and r.headers["location"] == "/ui"
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"] == "text/html; charset=utf-8"
    assert "<svg id=\"chart\"" in page.text and 'src="/ui/budgets.js"' in page.text


@pytest.mark.parametrize(("name", "media"), [("budgets.js", "text/javascript"), ("budgets.css", "text/css")])
def test_assets_are_served_same_origin_only(client: TestClient, name: str, media: str) -> None:
    r = client.get(f"/ui/{name}")
    assert r.status_code == 200 and r.headers["content-type"].startswith(media)
    assert r.content == (UI_DIR / name).read_bytes()
    csp = r.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp and "script-src 'self'" in csp


@pytest.mark.parametrize("name", ["index.html", "nope.js", "..%2Fapp.py", "budgets.JS"])
def test_unknown_ui_files_are_404(client: TestClient, name: str) -> None:
    r = client.get(f"/ui/{name}")
    assert r.status_code == 404


def test_page_is_public_and_holds_no_key(client: TestClient) -> None:
    """The key protects /embed, not the page: nothing served for the page contains it."""
    for path in ("/ui", "/ui/budgets.js", "/ui/budgets.css", "/budgets", "/budgets/traffic", "/info"):
        r = client.get(path)
        assert r.status_code == 200, path
        assert KEY not in r.text, path
    assert client.post("/embed", json={"inputs": "the cat"}).status_code == 401


def test_page_files_reach_nothing_but_this_server() -> None:
    """Works offline: no absolute URL but the SVG namespace in any served file."""
    for name in UI_FILES:
        text = (UI_DIR / name).read_text()
        urls = set(re.findall(r"https?://[^\s\"'`)]+", text))
        assert urls <= {"http://www.w3.org/2000/svg"}, (name, urls)


def test_ui_files_ship_as_package_data() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["mipic.service"]
    assert "ui/*" in patterns
    assert {p.name for p in UI_DIR.iterdir()} == set(UI_FILES)


def test_traffic_counts_each_budget(client: TestClient) -> None:
    auth = {"authorization": f"Bearer {KEY}"}
    before = {(b["dim"], b["layer"]): b["requests"] for b in client.get("/budgets/traffic").json()["budgets"]}
    for _ in range(3):
        assert client.post("/embed?dim=8&layer=1", json={"inputs": ["the cat", "a dog"]}, headers=auth).is_success
    assert client.post("/embed?dim=16&layer=2", json={"inputs": "the cat"}, headers=auth).is_success
    body = client.get("/budgets/traffic").json()
    assert body["model"] == "tiny@1"
    rows = {(b["dim"], b["layer"]): b for b in body["budgets"]}
    assert rows[(8, 1)]["requests"] - before.get((8, 1), 0) == 3
    assert rows[(16, 2)]["requests"] - before.get((16, 2), 0) == 1
    assert rows[(8, 1)]["embeddings"] >= 6
    for row in rows.values():
        assert row["mean_ms"] > 0 and 0 < row["p50_ms"] <= row["p95_ms"]
    assert list(rows) == sorted(rows)


def test_histogram_quantile_matches_prometheus() -> None:
    inf = float("inf")
    # 10 observations: 4 in (0, 1], 4 in (1, 2], 2 in (2, +Inf)
    buckets = [(1.0, 4.0), (2.0, 8.0), (inf, 10.0)]
    assert histogram_quantile(0.2, buckets) == pytest.approx(0.5)  # rank 2 of 4 in the first bucket
    assert histogram_quantile(0.5, buckets) == pytest.approx(1.25)  # rank 5: 1 of 4 into (1, 2]
    assert histogram_quantile(0.95, buckets) == 2.0  # in +Inf: the highest finite bound
    assert histogram_quantile(0.5, [(1.0, 0.0), (inf, 0.0)]) is None
    assert histogram_quantile(0.5, []) is None


def test_latency_by_budget_sums_endpoints_and_versions() -> None:
    m = Metrics()
    m.request_duration.labels("/embed", "8", "1", "a@1").observe(0.004)
    m.request_duration.labels("/v1/embeddings", "8", "1", "a@2").observe(0.006)
    m.request_duration.labels("/embed", "16", "2", "a@1").observe(0.020)
    m.embeddings.labels("8", "1", "a@1").inc(3)
    rows = latency_by_budget(m)
    assert [(r.dim, r.layer, r.requests, r.embeddings) for r in rows] == [(8, 1, 2, 3), (16, 2, 1, 0)]
    assert rows[0].mean_seconds == pytest.approx(0.005)
    assert 0.003 < (rows[0].p50_seconds or 0) <= 0.005  # rank 1 of 2: the top of the first one's bucket, (3 ms, 5 ms]
    assert latency_by_budget(Metrics()) == []
