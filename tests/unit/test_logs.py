"""One log format for mipic and uvicorn: text, or one JSON object per line (a real server's lines are checked
in tests/integration/test_drain.py)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest
import uvicorn

from mipic.logs import TEXT_FORMAT, logging_config, setup_logging


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    saved = {name: (lg.handlers[:], lg.level, lg.propagate) for name, lg in
             [("", root), *((n, logging.getLogger(n)) for n in ("uvicorn", "uvicorn.error", "uvicorn.access"))]}
    yield
    for name, (handlers, level, propagate) in saved.items():
        lg = logging.getLogger(name or None)
        lg.handlers[:] = handlers
        lg.setLevel(level)
        lg.propagate = propagate


def _emit() -> None:
    logging.getLogger("mipic.service.engine.engine").warning("repository %r: CURRENT is empty", "tiny")
    logging.getLogger("uvicorn.error").info("Started server process [%d]", 42)
    logging.getLogger("uvicorn.access").info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:5555", "POST", "/embed", "1.1", 503)
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("mipic.cli").exception("failed")


def test_json_lines_for_mipic_and_uvicorn(restore_logging: None, capsys: pytest.CaptureFixture[str]) -> None:
    config = logging_config("info", "json")
    uvicorn.Config(lambda: None, log_config=config, log_level="info")  # uvicorn applies the same dict
    _emit()
    lines = capsys.readouterr().err.strip().splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) == 4
    assert [r["logger"] for r in records] == ["mipic.service.engine.engine", "uvicorn.error", "uvicorn.access",
                                             "mipic.cli"]
    assert records[0]["level"] == "WARNING" and records[0]["message"] == "repository 'tiny': CURRENT is empty"
    assert records[1]["message"] == "Started server process [42]"
    assert {k: records[2][k] for k in ("client", "method", "path", "status")} == {
        "client": "127.0.0.1:5555", "method": "POST", "path": "/embed", "status": 503}
    assert records[3]["exc_info"].startswith("Traceback") and "ValueError: boom" in records[3]["exc_info"]
    assert all(r["time"].endswith("+00:00") for r in records)


def test_text_is_one_format_too(restore_logging: None, capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("info", "text")
    uvicorn.Config(lambda: None, log_config=logging_config("info", "text"), log_level="info")
    _emit()
    lines = [ln for ln in capsys.readouterr().err.splitlines() if not ln.startswith(("Traceback", " ", "ValueError"))]
    assert len(lines) == 4 and TEXT_FORMAT.startswith("%(asctime)s %(levelname)s %(name)s")
    for line, (level, name) in zip(lines, [("WARNING", "mipic.service.engine.engine"), ("INFO", "uvicorn.error"),
                                           ("INFO", "uvicorn.access"), ("ERROR", "mipic.cli")], strict=True):
        assert line.split()[2:4] == [level, f"{name}:"], line
