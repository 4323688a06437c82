"""A real Prometheus scrapes a real `mipic serve` and sees per-budget latency series (loopback only)."""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.integration

SERVER_START_TIMEOUT_S = 60
SCRAPE_TIMEOUT_S = 60
QUANTILE_QUERY = (
    "histogram_quantile(0.5, sum by (le, dim, layer) (rate(mipic_request_duration_seconds_bucket[30s])))"
)
COUNT_QUERY = "sum by (dim, layer) (mipic_request_duration_seconds_count)"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _http(url: str, body: dict[str, Any] | None = None, timeout_s: float = 5.0) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"content-type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, None
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0, None


@contextlib.contextmanager
def _process(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL)
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5)


def _tail(log: Path, n: int = 30) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-n:])


def _wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"mipic serve exited with {proc.returncode}:\n{_tail(log)}")
        if _http(url + "/ready", timeout_s=1.0)[0] == 200:
            return
        time.sleep(0.2)
    pytest.fail(f"mipic serve not ready after {SERVER_START_TIMEOUT_S} s:\n{_tail(log)}")


def _query(prom_url: str, promql: str) -> list[dict[str, Any]]:
    status, body = _http(f"{prom_url}/api/v1/query?" + urllib.parse.urlencode({"query": promql}), timeout_s=2.0)
    if status != 200 or body is None or body.get("status") != "success":
        return []
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def _by_budget(series: list[dict[str, Any]]) -> dict[tuple[str, str], float]:
    return {(s["metric"].get("dim", ""), s["metric"].get("layer", "")): float(s["value"][1]) for s in series}


def test_prometheus_scrapes_latency_per_budget(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        pytest.skip("prometheus not installed (scripts/ci_system_deps.sh installs it as root)")
    mipic = Path(sys.executable).with_name("mipic")
    if not mipic.is_file():
        pytest.skip(f"no `mipic` entry point next to {sys.executable}")
    try:
        model_dir: Path = request.getfixturevalue("tiny_model_dir")
    except pytest.FixtureLookupError:
        pytest.skip("tiny_model_dir fixture not available")

    manifest = json.loads((model_dir / "manifest.json").read_text())
    budgets = [(min(manifest["dims"]), 1), (max(manifest["dims"]), manifest["num_layers"])]
    expected = {(str(d), str(layer)) for d, layer in budgets}

    app_port, prom_port = _free_port(), _free_port()
    app_url, prom_url = f"http://127.0.0.1:{app_port}", f"http://127.0.0.1:{prom_port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIPIC_")}
    env.update({"MIPIC_BOOTSTRAP_DEFAULT": "false", "MIPIC_DRAIN_TIMEOUT_S": "2", "MIPIC_TOKENIZER_THREADS": "1"})
    serve_cmd = [str(mipic), "serve", "--host", "127.0.0.1", "--port", str(app_port), "--model", str(model_dir),
                 "--provider", "cpu", "--log-level", "warning"]

    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": "mipic", "static_configs": [{"targets": [f"127.0.0.1:{app_port}"]}]}],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    prom_cmd = [prometheus, f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{prom_port}",
                "--storage.tsdb.retention.time=1h", "--log.level=warn"]

    server_log, prom_log = tmp_path / "mipic.log", tmp_path / "prometheus.log"
    with _process(serve_cmd, server_log, env) as server, _process(prom_cmd, prom_log) as prom:
        _wait_ready(app_url, server, server_log)
        counts: dict[tuple[str, str], float] = {}
        quantiles: dict[tuple[str, str], float] = {}
        deadline = time.monotonic() + SCRAPE_TIMEOUT_S
        while time.monotonic() < deadline:
            assert prom.poll() is None, f"prometheus exited with {prom.returncode}:\n{_tail(prom_log)}"
            # Keep traffic flowing at both budgets so rate() over consecutive scrapes is non-zero.
            for dim, layer in budgets:
                status, body = _http(f"{app_url}/embed?dim={dim}&layer={layer}",
                                     {"inputs": ["the quick brown fox", "a lazy dog"]})
                assert status == 200, f"embed at dim={dim} layer={layer} answered {status}:\n{_tail(server_log)}"
                assert [len(v) for v in body["embeddings"]] == [dim, dim]
            counts = _by_budget(_query(prom_url, COUNT_QUERY))
            quantiles = {k: v for k, v in _by_budget(_query(prom_url, QUANTILE_QUERY)).items() if math.isfinite(v)}
            if expected <= counts.keys() and expected <= quantiles.keys():
                break
            time.sleep(0.5)
        else:
            _, targets = _http(f"{prom_url}/api/v1/targets")
            pytest.fail(
                f"no per-budget series after {SCRAPE_TIMEOUT_S} s: counts={counts} p50={quantiles}\n"
                f"targets={json.dumps(targets)[:2000]}\nprometheus log:\n{_tail(prom_log)}"
            )

    assert all(counts[b] >= 1 for b in expected)
    # The p50 of a tiny model on loopback is well under a second and above zero.
    assert all(0 < quantiles[b] < 1.0 for b in expected), quantiles
    assert server.returncode is not None and prom.returncode is not None
