"""A bad CURRENT pointer while serving: one WARNING per change, the watcher keeps going, /admin/reload answers
409 JSON without server paths, and the next valid promotion is followed."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from mipic.modeldir.repository import ModelRepository
from mipic.service.app import create_app
from mipic.service.settings import Settings

TOKEN = "s3cret-admin"
AUTH = {"authorization": f"Bearer {TOKEN}"}
WATCH_S = 0.05

# (what CURRENT becomes, words of the warning and of the 409 message)
BAD = [
    (b"", "CURRENT is empty"),
    (b"../../etc\n", "invalid version '../../etc'"),
    (b"\xff\xfe\xfa\n", "CURRENT is not UTF-8 text"),
    (None, "has no CURRENT pointer"),
    (b"9\n", "names version '9', which is not in the repository"),
    (b"7" * 100_000, "larger than 256 bytes"),
    (b"\xc3\x28\n", "CURRENT is not UTF-8 text"),  # another non-UTF-8 content: a change, so logged again
]


@pytest.fixture
def repo(tmp_path: Path, tiny_model_dir: Path, tiny_model_v2_dir: Path) -> ModelRepository:
    r = ModelRepository(tmp_path / "secret-dir" / "tiny")
    r.register(tiny_model_dir)
    r.register(tiny_model_v2_dir)
    r.promote("1")
    return r


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING
            and r.name == "mipic.service.engine.engine"]


def _set_pointer(repo: ModelRepository, content: bytes | None) -> None:
    pointer = repo.path / "CURRENT"
    if content is None:
        pointer.unlink(missing_ok=True)
    else:  # in one step, as an operator's `mv` would: the watcher never sees the truncated file in between
        tmp = pointer.with_name("CURRENT.tmp")
        tmp.write_bytes(content)
        tmp.replace(pointer)


def test_every_bad_current_is_one_warning_a_409_and_the_watcher_follows_the_next_promote(
        repo: ModelRepository, caplog: pytest.LogCaptureFixture) -> None:
    settings = Settings(model_dir=repo.path, provider="cpu", bootstrap_default=False,  # type: ignore[arg-type]
                        admin_token=TOKEN, watch_interval_s=WATCH_S)
    with caplog.at_level(logging.INFO), TestClient(create_app(settings)) as client:
        assert client.get("/info").json()["version"] == "1"
        for content, words in BAD:
            before = len(_warnings(caplog))
            _set_pointer(repo, content)
            time.sleep(20 * WATCH_S)  # many polls of the same bad pointer
            new = _warnings(caplog)[before:]
            assert len(new) == 1, f"{words!r}: expected one warning, got {new}"
            assert words in new[0] and new[0].endswith("still serving tiny@1")
            r = client.post("/admin/reload", headers=AUTH)
            assert r.status_code == 409 and r.headers["content-type"] == "application/json"
            err = r.json()["error"]
            assert err["code"] == "invalid_pointer" and words in err["message"]
            assert "secret-dir" not in r.text and str(repo.path) not in r.text and "Traceback" not in r.text
            assert len(_warnings(caplog)) == before + 1, "the admin call on the same pointer logs nothing new"
            assert client.post("/embed", json={"inputs": "still serving"}).json()["model"] == "tiny@1"
        # the watcher is alive: a valid promotion is followed without any admin call
        repo.promote("2")
        deadline = time.monotonic() + 10
        while client.get("/info").json()["version"] != "2":
            assert time.monotonic() < deadline, "the watcher did not follow the promotion"
            time.sleep(WATCH_S)
        assert client.post("/embed", json={"inputs": "a cat"}).json()["model"] == "tiny@2"
    # shutdown completed (TestClient raises if the lifespan shutdown failed) and nothing died on the way
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert "Traceback" not in caplog.text
