"""Dockerfile lint (no hadolint here), build-context hygiene and the shared build-steps script."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
BUILD_STEPS = ROOT / "scripts" / "docker_build_steps.sh"
SERVE_CMD = ["mipic", "serve", "--host", "0.0.0.0", "--port", "8080", "--model", "/models/all-minilm-l6-v2"]


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)  # (INSTRUCTION, arguments)

    def args_of(self, instruction: str) -> list[str]:
        return [a for i, a in self.instructions if i == instruction]


def _logical_lines(text: str) -> list[str]:
    """Instructions with backslash continuations joined and comment lines dropped."""
    lines: list[str] = []
    current = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if current and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append(current + stripped)
        current = ""
    assert not current, "Dockerfile ends inside a line continuation"
    return lines


def parse_dockerfile(path: Path = DOCKERFILE) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages in order, with ${ARG} in FROM lines resolved."""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in _logical_lines(path.read_text()):
        instruction, _, rest = line.partition(" ")
        instruction, rest = instruction.upper(), rest.strip()
        if instruction == "FROM":
            m = re.fullmatch(r"(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?", rest, flags=re.IGNORECASE)
            assert m, f"cannot parse FROM {rest!r}"
            base = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda g: global_args[g.group(1) or g.group(2)], m.group(1))
            stages.append(Stage(name=m.group(2) or str(len(stages)), base=base))
        elif not stages:
            assert instruction == "ARG", f"{instruction} before the first FROM"
            name, _, default = rest.partition("=")
            global_args[name] = default
        else:
            stages[-1].instructions.append((instruction, rest))
    return global_args, stages


@pytest.fixture(scope="module")
def stages() -> dict[str, Stage]:
    _, parsed = parse_dockerfile()
    return {s.name: s for s in parsed}


def test_stages_and_default_target() -> None:
    _, parsed = parse_dockerfile()
    names = [s.name for s in parsed]
    for required in ("build", "serve-venv", "gpu", "trainer", "runtime"):
        assert required in names
    assert len(names) == len(set(names))
    # `docker build .` builds the last stage: it must be the torch-free CPU server.
    assert names[-1] == "runtime"


def test_base_images_are_pinned(stages: dict[str, Stage]) -> None:
    global_args, _ = parse_dockerfile()
    for stage in stages.values():
        if stage.base in stages:
            continue  # FROM an earlier stage
        image, _, tag = stage.base.rpartition(":")
        assert image and "/" not in tag, f"{stage.name}: base image {stage.base!r} has no tag"
        assert tag != "latest", f"{stage.name}: base image {stage.base!r} uses :latest"
    assert global_args["PYTHON_IMAGE"].startswith("python:3.11-slim")
    assert stages["build"].base == global_args["PYTHON_IMAGE"]
    assert re.fullmatch(r"nvidia/cuda:[\d.]+-cudnn-runtime-ubuntu[\d.]+", global_args["CUDA_IMAGE"])
    assert re.fullmatch(r"\d+\.\d+\.\d+", global_args["ORT_GPU_VERSION"])
    syntax = DOCKERFILE.read_text().splitlines()[0]
    assert syntax.startswith("# syntax=") and not syntax.endswith(":latest")


def test_build_stage_runs_the_shared_build_steps(stages: dict[str, Stage]) -> None:
    runs = " ".join(stages["build"].args_of("RUN"))
    assert "scripts/docker_build_steps.sh" in runs
    assert "EXTRAS=train" in runs and "VENV=/opt/build-venv" in runs and "MODELS_DIR=/models" in runs
    script = BUILD_STEPS.read_text()
    assert 'bootstrap --out "$out"' in script
    assert 'out="$MODELS_DIR/$MODEL_NAME/$MODEL_VERSION"' in script
    assert 'MODEL_NAME="all-minilm-l6-v2"' in script and 'MODEL_VERSION="1"' in script
    assert 'repo="$MODELS_DIR/$MODEL_NAME"' in script and "repo.promote(version)" in script
    assert "scripts/install.sh" in script


def _install_env(run: str) -> dict[str, str]:
    """The VAR=value assignments right before ``scripts/install.sh`` in a RUN line."""
    head = run.split("scripts/install.sh")[0].split("&&")[-1]
    env = {}
    for token in shlex.split(head):
        name, eq, value = token.partition("=")
        if eq:
            env[name] = value
    return env


def test_serving_venvs_install_no_torch(stages: dict[str, Stage]) -> None:
    for name in ("serve-venv", "gpu-venv"):
        run = next(r for r in stages[name].args_of("RUN") if "scripts/install.sh" in r)
        env = _install_env(run)
        assert env == {"VENV": "/opt/venv", "EXTRAS": "", "EDITABLE": "0", **({"PYTHON": "python3"}
                                                                             if name == "gpu-venv" else {})}
    gpu_run = " ".join(stages["gpu-venv"].args_of("RUN"))
    assert "pip uninstall -y -q onnxruntime" in gpu_run and 'onnxruntime-gpu==${ORT_GPU_VERSION}' in gpu_run
    # The servers take their venv from the serving stages and only /models from the build stage.
    for name, venv_stage in (("runtime", "serve-venv"), ("gpu", "gpu-venv")):
        copies = stages[name].args_of("COPY")
        assert f"--from={venv_stage} /opt/venv /opt/venv" in copies
        from_build = [c for c in copies if "--from=build" in c]
        assert from_build and all(c.endswith("/models /models") for c in from_build)
        assert not any("build-venv" in c for c in copies)
        assert "torch" not in " ".join(stages[name].args_of("RUN"))


def _env(stage: Stage) -> dict[str, str]:
    env: dict[str, str] = {}
    for args in stage.args_of("ENV"):
        for token in shlex.split(args):
            name, _, value = token.partition("=")
            env[name] = value
    return env


@pytest.mark.parametrize("name", ["runtime", "gpu"])
def test_server_stages(stages: dict[str, Stage], name: str) -> None:
    stage = stages[name]
    users = stage.args_of("USER")
    assert users, f"{name}: no USER"
    uid = users[-1].split(":")[0]
    assert uid not in ("root", "0") and uid.isdigit() and int(uid) >= 1000, "numeric non-root uid"
    (healthcheck,) = stage.args_of("HEALTHCHECK")
    assert "/ready" in healthcheck and "curl" not in healthcheck and "wget" not in healthcheck
    exec_form = healthcheck[healthcheck.index("CMD") + 3:].strip()
    argv = [str(a) for a in json.loads(exec_form)]
    assert argv[:2] == ["python", "-c"]
    compile(argv[2], "<healthcheck>", "exec")
    assert "http://127.0.0.1:8080/ready" in argv[2]
    (cmd,) = stage.args_of("CMD")
    assert json.loads(cmd) == SERVE_CMD
    assert "8080" in stage.args_of("EXPOSE")
    env = _env(stage)
    assert env["MIPIC_BOOTSTRAP_DEFAULT"] == "false"
    assert env["MIPIC_PROVIDER"] == ("auto" if name == "gpu" else "cpu")
    assert env["PATH"].startswith("/opt/venv/bin:")
    assert "workers" not in cmd  # one uvicorn worker: `mipic serve` never forks more


def test_gpu_stage_is_cuda_based(stages: dict[str, Stage]) -> None:
    global_args, _ = parse_dockerfile()
    assert stages["gpu"].base == "gpu-base"
    assert stages["gpu-base"].base == global_args["CUDA_IMAGE"]


def test_trainer_stage(stages: dict[str, Stage]) -> None:
    trainer = stages["trainer"]
    assert trainer.base == "build"  # has /opt/build-venv with torch and the training extras
    assert trainer.args_of("USER")[-1].split(":")[0] not in ("root", "0")
    assert json.loads(trainer.args_of("ENTRYPOINT")[0]) == ["mipic"]
    assert json.loads(trainer.args_of("CMD")[0]) == ["retrain", "--config", "configs/retrain_minilm.yaml"]
    assert _env(trainer)["PATH"].startswith("/opt/build-venv/bin:")


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore semantics, enough for plain and ``**/`` patterns with ``!`` exceptions."""
    ignored = False
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern[1:] if negate else pattern
        pat = pat.strip("/")
        candidates = [pat, pat[3:]] if pat.startswith("**/") else [pat]
        if any(fnmatch.fnmatchcase(p, c) for p in prefixes for c in candidates):
            ignored = not negate
    return ignored


def _context_sources(stages: dict[str, Stage]) -> set[str]:
    """Paths COPYed from the build context (not from another stage)."""
    sources: set[str] = set()
    for stage in stages.values():
        for copy in stage.args_of("COPY"):
            tokens = shlex.split(copy)
            if not any(t.startswith("--from=") for t in tokens):
                sources.update([t for t in tokens if not t.startswith("--")][:-1])
    return sources


def test_dockerignore_keeps_what_the_dockerfile_copies(stages: dict[str, Stage]) -> None:
    patterns = [
        line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    for must_ignore in (".git", ".venv", "models", "data", "runs"):
        assert _ignored(must_ignore, patterns), f".dockerignore should exclude {must_ignore}"
    sources = _context_sources(stages)
    assert {"pyproject.toml", "constraints.txt", "README.md", "scripts", "src", "configs"} <= sources
    for src in sorted(sources):
        assert not _ignored(src, patterns), f"{src} is COPYed but excluded by .dockerignore"


def test_files_the_build_copies_exist(stages: dict[str, Stage]) -> None:
    """README.md (pyproject's readme, needed to build the wheel) and configs/ (the trainer) must be there."""
    for src in sorted(_context_sources(stages)):
        assert (ROOT / src).exists(), f"{src} is COPYed by the Dockerfile but missing from the repository"
    assert (ROOT / "configs" / "retrain_minilm.yaml").is_file(), "the trainer image's default config"


@pytest.mark.parametrize("script", ["docker_build_steps.sh", "ci_system_deps.sh"])
def test_scripts_are_executable_bash(script: str) -> None:
    path = ROOT / "scripts" / script
    assert os.access(path, os.X_OK), f"{path} is not executable"
    assert path.read_text().startswith("#!/usr/bin/env bash\n")
    bash = shutil.which("bash")
    assert bash
    subprocess.run([bash, "-n", str(path)], check=True)


def test_build_steps_refuse_an_install_without_torch(tmp_path: Path) -> None:
    """The export needs the training extras; the script says so before installing anything."""
    res = subprocess.run(
        [str(BUILD_STEPS)], env={**os.environ, "EXTRAS": "", "VENV": str(tmp_path / "v"),
                                 "MODELS_DIR": str(tmp_path / "m")},
        capture_output=True, text=True, timeout=30, check=False,
    )
    assert res.returncode == 2
    assert "EXTRAS must include 'train'" in res.stderr
    assert not (tmp_path / "v").exists()
