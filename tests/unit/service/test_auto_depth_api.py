"""``layer: "auto"`` on every embed surface: what was served is said (body, header, metrics), the vector is the
explicit layer's bit for bit, bounds are kept, and bad values are a 4xx naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from tests.conftest import TINY_LAYERS, app_client, make_settings

from mipic.service.engine.engine import Engine

TEXTS = ["the cat sat", "a dog barked twice"]


def engine_of(client: TestClient) -> Engine:
    engine = client.app.state.engine  # type: ignore[attr-defined]
    assert isinstance(engine, Engine)
    return engine


def test_idle_auto_serves_max_layer_and_says_so(client: TestClient) -> None:
    r = client.post("/embed?layer=auto", json={"inputs": TEXTS})
    assert r.status_code == 200, r.text
    assert r.json()["layer"] == TINY_LAYERS
    assert r.headers["x-exit-layer"] == str(TINY_LAYERS) and r.headers["x-exit-layer-mode"] == "auto"
    fixed = client.post(f"/embed?layer={TINY_LAYERS}", json={"inputs": TEXTS})
    assert fixed.headers["x-exit-layer-mode"] == "fixed"
    assert r.json()["embeddings"] == fixed.json()["embeddings"]  # bit for bit: the same rows, the same path
    capped = client.post("/embed", json={"inputs": TEXTS, "layer": "auto", "max_layer": 2, "dim": 16})
    assert capped.json()["layer"] == 2
    assert capped.json()["embeddings"] == client.post("/embed?layer=2&dim=16", json={"inputs": TEXTS}).json()[
        "embeddings"]
    metrics = client.get("/metrics").text
    assert f'mipic_exit_layer_requests_total{{layer="{TINY_LAYERS}",mode="auto",model_version="1"}}' in metrics
    assert 'mipic_exit_layer_requests_total{layer="2",mode="auto",model_version="1"}' in metrics


def test_openai_and_tei_surfaces_take_auto(client: TestClient) -> None:
    o = client.post("/v1/embeddings", json={"input": TEXTS, "layer": "auto", "max_layer": 1})
    assert o.status_code == 200, o.text
    assert o.json()["layer"] == 1 and o.headers["x-exit-layer"] == "1"
    explicit = client.post("/v1/embeddings", json={"input": TEXTS, "layer": 1})
    assert "layer" not in explicit.json()  # OpenAI's shape unchanged unless the server chose
    assert [d["embedding"] for d in o.json()["data"]] == [d["embedding"] for d in explicit.json()["data"]]
    for path, body in (("/tei/embed?layer=auto&min_layer=2&max_layer=2", {"inputs": TEXTS}),
                       ("/tei", {"inputs": TEXTS, "layer": "auto", "min_layer": 2, "max_layer": 2})):
        t = client.post(path, json=body)
        assert t.status_code == 200, t.text
        assert t.headers["x-exit-layer"] == "2" and t.headers["x-exit-layer-mode"] == "auto"
        assert t.json() == client.post("/tei/embed?layer=2", json={"inputs": TEXTS}).json()


def test_slow_server_answers_shallower_within_bounds(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = engine_of(client)
    # the choice is tested here, not the shedding at the batch (test_batcher): a slow test machine must not turn
    # the 40 ms targets below into 429s
    monkeypatch.setattr(engine.batcher, "_shed_late", lambda batch, now: batch)
    saved = engine.batcher.load.seconds_per_unit
    engine._depth_correction = 1.0  # what earlier requests in this module measured does not steer this test
    try:
        # every full-depth token now "costs" 5 ms: 2 texts of ~5 tokens at the last layer ≈ 50 ms, at layer 1 ~17
        engine.batcher.load.seconds_per_unit = 0.005
        r = client.post("/embed", json={"inputs": TEXTS, "layer": "auto", "max_latency_ms": 40})
        assert r.status_code == 200 and r.json()["layer"] < TINY_LAYERS
        assert client.post("/embed", json={"inputs": TEXTS, "layer": "auto", "max_latency_ms": 40,
                                           "min_layer": 2}).json()["layer"] == 2  # never below min_layer
        assert client.post("/embed", json={"inputs": TEXTS, "layer": "auto"}).json()["layer"] == TINY_LAYERS
    finally:
        engine.batcher.load.seconds_per_unit = saved


def test_queue_that_makes_even_min_layer_late_is_a_429(client: TestClient,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    engine = engine_of(client)
    batcher = engine.batcher
    engine._depth_correction = 1.0
    try:
        batcher.load.queued_units = 1e9  # as if a huge backlog were queued ahead
        tokenizer = engine.model.tokenizer
        calls: list[int] = []
        encode = tokenizer.encode
        monkeypatch.setattr(tokenizer, "encode", lambda texts, **kw: calls.append(len(texts)) or encode(texts, **kw))
        r = client.post("/embed", json={"inputs": TEXTS, "layer": "auto"})
        assert r.status_code == 429 and "retry-after" in r.headers
        assert "max_latency_ms=250" in r.json()["error"]["message"]
        assert calls == []  # refused before the tokenizer spent anything on it
        fixed = client.post("/embed?layer=1", json={"inputs": TEXTS})  # a fixed layer is queued as before
        assert fixed.status_code == 200
    finally:
        batcher.load.queued_units = 0.0
    assert client.post("/embed", json={"inputs": TEXTS, "layer": "auto"}).status_code == 200


BAD = [
    # (path, body, param, message part)
    ("/embed", {"inputs": "x", "layer": "fast"}, "layer", None),
    ("/embed?layer=fast", {"inputs": "x"}, "layer", None),
    ("/embed", {"inputs": "x", "layer": "auto", "min_layer": 3, "max_layer": 2}, "min_layer", "above max_layer"),
    ("/embed", {"inputs": "x", "layer": "auto", "min_layer": 0}, "min_layer", "between 1 and 3"),
    ("/embed", {"inputs": "x", "layer": "auto", "max_layer": 9}, "max_layer", "between 1 and 3"),
    ("/embed", {"inputs": "x", "layer": "auto", "max_latency_ms": 0}, "max_latency_ms", None),
    ("/embed?layer=auto&max_latency_ms=-5", {"inputs": "x"}, "max_latency_ms", None),
    ("/embed", {"inputs": "x", "layer": 2, "min_layer": 1}, "min_layer", 'only with layer "auto"'),
    ("/embed", {"inputs": "x", "max_latency_ms": 100}, "max_latency_ms", 'only with layer "auto"'),
    ("/embed?layer=auto", {"inputs": "x", "layer": 2}, "layer", "in the query"),
    ("/v1/embeddings", {"input": "x", "layer": "fast"}, "layer", None),
    ("/v1/embeddings", {"input": "x", "layer": "auto", "min_layer": 3, "max_layer": 1}, "min_layer", "above"),
    ("/v1/embeddings", {"input": "x", "layer": "auto", "max_latency_ms": -1}, "max_latency_ms", None),
    ("/v1/embeddings", {"input": "x", "min_layer": 2}, "min_layer", 'only with layer "auto"'),
]


@pytest.mark.parametrize(("path", "body", "param", "part"), BAD)
def test_bad_depth_values_name_the_field(client: TestClient, path: str, body: dict[str, object], param: str,
                                         part: str | None) -> None:
    r = client.post(path, json=body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert param in (err["param"] or "") or param in err["message"], err
    if part:
        assert part in err["message"]


@pytest.mark.parametrize("body", [
    {"inputs": "x", "layer": "fast"},
    {"inputs": "x", "layer": "auto", "min_layer": 3, "max_layer": 2},
    {"inputs": "x", "layer": "auto", "max_latency_ms": 0},
])
def test_tei_bad_depth_values_are_422_naming_the_field(client: TestClient, body: dict[str, object]) -> None:
    r = client.post("/tei/embed", json=body)
    assert r.status_code == 422, r.text
    assert r.json()["error_type"] == "Validation"
    assert any(k in r.json()["error"] for k in ("layer", "max_latency_ms")), r.json()


def test_the_loop_lag_is_sampled_only_once_auto_requests_come(tiny_model_dir: Path) -> None:
    """No timer wakes the event loop of a server that never gets an auto-depth request; the first one starts it."""
    with app_client(make_settings(tiny_model_dir)) as c:
        engine = engine_of(c)
        assert c.post("/embed?layer=1", json={"inputs": TEXTS}).status_code == 200
        assert engine._lag_watch is None
        assert c.post("/embed?layer=auto", json={"inputs": TEXTS}).status_code == 200
        watch = engine._lag_watch
        assert watch is not None and not watch.done()
        assert c.post("/embed?layer=auto", json={"inputs": TEXTS}).status_code == 200
        assert engine._lag_watch is watch  # one timer, not one per request


def test_a_request_too_large_for_its_target_alone_is_served_at_min_layer_not_shed(client: TestClient) -> None:
    """Nothing ahead, but its own work at min_layer exceeds the target: served there (late), neither refused at
    admission nor shed at the batch — only a queue that makes a request late is a reason to refuse it."""
    engine = engine_of(client)
    saved = engine.batcher.load.seconds_per_unit
    engine._depth_correction = 1.0
    try:
        engine.batcher.load.seconds_per_unit = 1.0  # a full-depth token "costs" 1 s: any text misses 40 ms
        r = client.post("/embed", json={"inputs": TEXTS, "layer": "auto", "max_latency_ms": 40, "max_layer": 2})
        assert r.status_code == 200, r.text
        assert r.json()["layer"] == 1
    finally:
        engine.batcher.load.seconds_per_unit = saved
