"""Hot reload under load: promote, roll back and offer a corrupted version while clients hammer the server.

Every request must succeed, and every response's vectors must equal the reference vectors of the
version named in that response. Afterwards only one model is alive.
"""

from __future__ import annotations

import asyncio
import gc
import shutil
import weakref
from pathlib import Path

import httpx
import numpy as np
import pytest
from tests.conftest import app_client, make_settings

from mipic.modeldir.repository import ModelRepository
from mipic.modeldir.runner import LoadedModel, Row
from mipic.service.app import create_app

TEXTS = ["the quick brown fox", "a cat", "the lazy dog is not a cat", "embed this text"]
TOKEN = "s3cret-admin"


def reference(model_dir: Path) -> dict[str, np.ndarray]:
    m = LoadedModel(model_dir, provider="cpu")
    ids = [e.ids for e in m.tokenizer.encode(TEXTS)]
    return {t: v for t, v in zip(TEXTS, m.run([Row(ids=i, dim=16, layer=2) for i in ids]), strict=True)}


@pytest.fixture
def repo(tmp_path: Path, tiny_model_dir: Path, tiny_model_v2_dir: Path) -> ModelRepository:
    r = ModelRepository(tmp_path / "tiny")
    r.register(tiny_model_dir)
    r.register(tiny_model_v2_dir)
    # version 3: a copy of 2 whose manifest claims version 3 but whose layer file is damaged
    shutil.copytree(r.path / "2", r.path / "3")
    manifest = (r.path / "3" / "manifest.json").read_text().replace('"version": "2"', '"version": "3"')
    (r.path / "3" / "manifest.json").write_text(manifest)
    layer = r.path / "3" / "layer_02.onnx"
    layer.write_bytes(layer.read_bytes()[:-64])  # truncated copy: the checksum check must refuse it
    r.promote("1")
    return r


async def _load(url: str, stop: asyncio.Event, refs: dict[str, dict[str, np.ndarray]],
                results: list[tuple[int, str]]) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        i = 0
        while not stop.is_set():
            text = TEXTS[i % len(TEXTS)]
            i += 1
            r = await client.post("/embed?dim=16&layer=2", json={"inputs": [text]})
            version = r.json().get("model", "") if r.status_code == 200 else ""
            results.append((r.status_code, version))
            if r.status_code == 200:
                got = np.array(r.json()["embeddings"][0])
                np.testing.assert_allclose(got, refs[version][text], atol=1e-5)
                assert r.headers["x-model-version"] == version


async def _admin(client: httpx.AsyncClient) -> httpx.Response:
    return await client.post("/admin/reload", headers={"authorization": f"Bearer {TOKEN}"})


@pytest.mark.integration
def test_reload_under_load_drops_nothing(repo: ModelRepository, live_server_factory) -> None:  # type: ignore[no-untyped-def]
    refs = {"tiny@1": reference(repo.path / "1"), "tiny@2": reference(repo.path / "2")}
    assert not np.allclose(refs["tiny@1"]["a cat"], refs["tiny@2"]["a cat"])
    app = create_app(make_settings(repo.path, admin_token=TOKEN, watch_interval_s=0.2))
    srv = live_server_factory(app)
    engine = app.state.engine
    loaded: list[weakref.ref[LoadedModel]] = [weakref.ref(engine.model)]
    real_swap = engine._on_swap

    def track(old: LoadedModel | None, new: LoadedModel) -> None:
        loaded.append(weakref.ref(new))
        real_swap(old, new)

    engine._on_swap = track

    async def scenario() -> list[tuple[int, str]]:
        stop = asyncio.Event()
        results: list[tuple[int, str]] = []
        clients = [asyncio.create_task(_load(srv.url, stop, refs, results)) for _ in range(6)]
        async with httpx.AsyncClient(base_url=srv.url, timeout=30) as admin:
            await asyncio.sleep(0.5)
            repo.promote("2")  # picked up by the pointer watcher
            for _ in range(100):
                if (await admin.get("/info")).json()["version"] == "2":
                    break
                await asyncio.sleep(0.1)
            assert (await admin.get("/info")).json()["version"] == "2"
            await asyncio.sleep(0.5)
            # a corrupted version is refused; version 2 keeps serving
            (repo.path / "CURRENT").write_text("3\n")
            r = await _admin(admin)
            assert r.status_code == 409 and r.json()["error"]["code"] == "model_rejected"
            assert "Traceback" not in r.text and str(repo.path) not in r.text
            assert r.json()["error"]["message"] == "model version '3' refused: checksum mismatch for layer_02.onnx"
            assert (await admin.get("/info")).json()["version"] == "2"
            (repo.path / "CURRENT").write_text("2\n")
            await asyncio.sleep(0.5)
            # roll back through the admin endpoint
            (repo.path / "CURRENT").write_text("1\n")
            r = await _admin(admin)  # the watcher may have switched first: then nothing changes here
            assert r.status_code == 200 and r.json()["model"] == "tiny@1"
            await asyncio.sleep(0.5)
            # auth: 401 without a token, 403 with a wrong one
            assert (await admin.post("/admin/reload")).status_code == 401
            bad = await admin.post("/admin/reload", headers={"authorization": "Bearer nope"})
            assert bad.status_code == 403
        stop.set()
        await asyncio.gather(*clients)
        return results

    results = asyncio.run(scenario())
    statuses = {s for s, _ in results}
    versions = {v for _, v in results}
    assert statuses == {200}, f"failed requests: {[r for r in results if r[0] != 200][:5]}"
    assert versions == {"tiny@1", "tiny@2"}
    assert len(results) > 50
    # one model's worth afterwards: the first load and version 2 are both gone
    gc.collect()
    assert engine.model.version == "1"
    alive = [ref() for ref in loaded if ref() is not None]
    assert len(loaded) >= 3 and alive == [engine.model]  # versions swapped out were all freed
    metrics = httpx.get(srv.url + "/metrics").text
    assert 'mipic_model_info{model="tiny",model_version="1"' in metrics
    assert 'model_version="2",provider' not in metrics.split("mipic_model_info")[-1]


def test_admin_reload_switches_without_watcher(repo: ModelRepository) -> None:
    auth = {"authorization": f"Bearer {TOKEN}"}
    with app_client(make_settings(repo.path, admin_token=TOKEN, watch_interval_s=0)) as client:
        repo.promote("2")
        assert client.get("/info").json()["version"] == "1"  # no watcher: nothing happens by itself
        r = client.post("/admin/reload", headers=auth)
        assert r.json() == {"model": "tiny@2", "changed": True}
        assert client.post("/admin/reload", headers=auth).json() == {"model": "tiny@2", "changed": False}
        assert client.post("/embed", json={"inputs": "a cat"}).json()["model"] == "tiny@2"


def test_admin_disabled_without_token(tiny_model_dir: Path) -> None:
    with app_client(make_settings(tiny_model_dir)) as client:
        assert client.post("/admin/reload").status_code == 401
        r = client.post("/admin/reload", headers={"authorization": "Bearer x"})
        assert r.status_code == 403 and r.json()["error"]["code"] == "admin_disabled"
