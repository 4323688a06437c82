"""The retrain command of every deploy file really runs: it is read out of docker-compose.yml, the Dockerfile's
trainer stage and the example Kubernetes Job, and run with ``--dry-run`` in a copy of the image's working
directory (``/app`` with ``configs/``), which must be left untouched."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from tests.deploy.test_deploy_docker import parse_dockerfile

ROOT = Path(__file__).resolve().parents[2]


def _trainer_stage() -> tuple[list[str], list[str], dict[str, str], str]:
    """ENTRYPOINT, CMD, ENV and WORKDIR of the Dockerfile's trainer stage."""
    _, stages = parse_dockerfile()
    (stage,) = [s for s in stages if s.name == "trainer"]
    env: dict[str, str] = {}
    for args in stage.args_of("ENV"):
        for token in shlex.split(args):
            name, _, value = token.partition("=")
            env[name] = value
    return (json.loads(stage.args_of("ENTRYPOINT")[-1]), json.loads(stage.args_of("CMD")[-1]), env,
            stage.args_of("WORKDIR")[-1])


def _commands() -> dict[str, list[str]]:
    entrypoint, cmd, _, _ = _trainer_stage()
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["trainer"]
    assert compose["build"]["target"] == "trainer" and "entrypoint" not in compose
    (job,) = [d for d in yaml.safe_load_all((ROOT / "deploy/k8s/examples/retrain-job.yaml").read_text()) if d]
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["image"].startswith("mipic-trainer:")
    return {
        "docker-compose.yml": entrypoint + compose["command"],
        "Dockerfile": entrypoint + cmd,
        "retrain-job.yaml": container.get("command", entrypoint) + container["args"],
    }


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


@pytest.mark.parametrize("source", ["docker-compose.yml", "Dockerfile", "retrain-job.yaml"])
def test_the_trainer_command_runs(source: str, tmp_path: Path) -> None:
    argv = _commands()[source]
    assert argv[:2] == ["mipic", "retrain"], argv
    config = argv[argv.index("--config") + 1]
    _, _, image_env, workdir = _trainer_stage()
    assert workdir == "/app"  # relative config paths resolve against the copied configs/
    app = tmp_path / "app"
    (app / "configs").mkdir(parents=True)
    for f in (ROOT / "configs").glob("*.yaml"):
        (app / "configs" / f.name).write_bytes(f.read_bytes())
    before = _tree(tmp_path)
    env = {**os.environ, "MIPIC_DATA_DIR": str(tmp_path / "data"), "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": image_env.get("TOKENIZERS_PARALLELISM", "false")}
    res = subprocess.run([sys.executable, "-m", "mipic.cli", *argv[1:], "--dry-run"], cwd=app, env=env,
                         capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0, f"{source}: {' '.join(argv)} --dry-run failed:\n{res.stderr}"
    assert "Traceback" not in res.stderr
    assert f"retrain plan for {config}" in res.stdout
    assert "1. train: configs/mipic_minilm.yaml (objective mipic)" in res.stdout
    assert "repository models/all-minilm-l6-v2" in res.stdout and "6. promote: CURRENT -> 1" in res.stdout
    assert _tree(tmp_path) == before, "a dry run must not write anything"


def test_a_training_config_is_refused_in_one_line(tmp_path: Path) -> None:
    """What the deploy files used to run: a training config given to `mipic retrain`."""
    res = subprocess.run([sys.executable, "-m", "mipic.cli", "retrain", "--config",
                          str(ROOT / "configs/mipic_minilm.yaml"), "--dry-run"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    (line,) = res.stderr.strip().splitlines()
    assert line.startswith("mipic: error: bad retrain config") and "Extra inputs are not permitted" in line
    assert list(tmp_path.iterdir()) == []
