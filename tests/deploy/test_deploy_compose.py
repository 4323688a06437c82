"""docker-compose.yml: valid for `docker-compose config` (no engine needed) and wired as documented."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from mipic.service.server import SHUTDOWN_MARGIN_S

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"


def _compose_config(*extra: str) -> dict[str, Any]:
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.skip("docker-compose not installed (scripts/ci_system_deps.sh installs it as root)")
    # A clean environment: the file's ${VAR:-default} and pass-through variables resolve the same everywhere.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MIPIC_", "GRAFANA_", "COMPOSE_"))}
    res = subprocess.run(
        [exe, "-f", str(COMPOSE), *extra, "config"], cwd=ROOT, env=env,
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert res.returncode == 0, f"docker-compose config failed:\n{res.stderr}"
    config: dict[str, Any] = yaml.safe_load(res.stdout)
    return config


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    # With the trainer profile enabled, so one (slow, ~3 s) run covers every service.
    return _compose_config("--profile", "trainer")


def test_default_services(config: dict[str, Any]) -> None:
    services = config["services"]
    assert set(services) == {"mipic", "prometheus", "grafana", "trainer"}
    # Only the trainer is behind a profile: `docker compose up` starts the rest, the trainer runs on demand.
    assert {name for name, svc in services.items() if svc.get("profiles")} == {"trainer"}


def test_mipic_service(config: dict[str, Any]) -> None:
    svc = config["services"]["mipic"]
    assert svc["build"]["target"] == "runtime"
    assert Path(svc["build"]["context"]) == ROOT
    assert {"published": 8080, "target": 8080} in [
        {k: int(v) for k, v in p.items() if k in ("published", "target")} for p in svc["ports"]
    ]
    assert "models:/models:rw" in svc["volumes"]
    hc = svc["healthcheck"]
    assert hc["test"][0] == "CMD" and "/ready" in hc["test"][-1]
    env = svc["environment"]
    assert env["MIPIC_BOOTSTRAP_DEFAULT"] == "false"
    # Unset on the host -> absent in the container (an empty token must never enable /admin).
    assert env.get("MIPIC_ADMIN_TOKEN") is None and env.get("MIPIC_API_KEY") is None
    drain = float(env["MIPIC_DRAIN_TIMEOUT_S"])
    grace = svc["stop_grace_period"]
    # docker stop sends SIGTERM, then SIGKILL after the grace period: the drain and shutdown must fit in it
    assert grace.endswith("s") and float(grace[:-1]) >= drain + SHUTDOWN_MARGIN_S


def test_prometheus_and_grafana_mount_the_deploy_files(config: dict[str, Any]) -> None:
    prom = config["services"]["prometheus"]
    assert prom["image"].startswith("prom/prometheus:v")
    assert f"{ROOT}/deploy/prometheus:/etc/prometheus:ro" in prom["volumes"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prom["command"]
    scrape = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())["scrape_configs"]
    targets = [t for job in scrape if job["job_name"] == "mipic" for sc in job["static_configs"] for t in sc["targets"]]
    assert targets == ["mipic:8080"]

    grafana = config["services"]["grafana"]
    assert grafana["image"].startswith("grafana/grafana:") and not grafana["image"].endswith(":latest")
    assert f"{ROOT}/deploy/grafana/provisioning:/etc/grafana/provisioning:ro" in grafana["volumes"]
    assert f"{ROOT}/deploy/grafana/dashboards:/var/lib/grafana/dashboards:ro" in grafana["volumes"]
    provider = yaml.safe_load((ROOT / "deploy/grafana/provisioning/dashboards/mipic.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    datasource = yaml.safe_load((ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"


def test_trainer_profile(config: dict[str, Any]) -> None:
    trainer = config["services"]["trainer"]
    assert trainer["profiles"] == ["trainer"]
    assert trainer["build"]["target"] == "trainer"
    assert trainer["command"] == ["retrain", "--config", "configs/retrain_minilm.yaml"]  # run: test_deploy_trainer
    # The same named volume as the server: promotions land where the server reads.
    assert "models:/models:rw" in trainer["volumes"]
    assert "models:/models:rw" in config["services"]["mipic"]["volumes"]
