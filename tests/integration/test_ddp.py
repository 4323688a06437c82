"""`torchrun --nproc_per_node 2 mipic train` on CPU is real data parallelism (gloo): two processes with 4 texts
each train exactly like one process with 2 × 4 texts of gradient accumulation, and only rank 0 writes final/."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import training_sentences

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.integration

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
STEPS = 3
# Same data, same order, same micro-batches; only the reduction differs (all-reduce over gloo vs accumulation),
# so the weights agree to float32 rounding.
WEIGHT_TOLERANCE = 1e-5


def _run(args: list[str], env: dict[str, str]) -> None:
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_torchrun_on_cpu_is_data_parallel(tiny_torch_model: Any, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    _, _, base = tiny_torch_model
    sentences = tmp_path / "sentences.txt"
    sentences.write_text("\n".join(training_sentences(64)) + "\n")
    common = ["--config", str(CONFIGS / "tiny_smoke.yaml"), "--set", f"model.base={base}",
              "--set", f"data.train_file={sentences}", "--set", "model.dropout=0.0",
              "--set", "train.group_by_length=false", "--set", f"train.max_steps={STEPS}",
              "--set", "train.save_steps=100", "--set", "train.batch_size=4", "--set", "loss.sia_layers=null"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    _run([sys.executable, "-m", "mipic.cli", "train", *common, "--set", "train.grad_accum=2",
          "--output-dir", str(single)], env)
    _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
          "-m", "mipic.cli", "train", *common, "--output-dir", str(ddp)], env)

    a = load_file(str(single / "final" / "model.safetensors"))
    b = load_file(str(ddp / "final" / "model.safetensors"))
    base_w = load_file(str(Path(base) / "model.safetensors"))
    key = next(k for k in a if k.endswith("encoder.layer.0.attention.self.query.weight"))
    assert float((a[key] - base_w[key]).abs().max()) > 1e-4  # it did train
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst <= WEIGHT_TOLERANCE, worst
    log = json.loads((ddp / "final" / "training_log.json").read_text())
    assert log["global_step"] == STEPS
    ddp_losses = [h["loss"] for h in log["log_history"] if "loss" in h]
    single_losses = [h["loss"] for h in json.loads((single / "final" / "training_log.json").read_text())["log_history"]
                     if "loss" in h]
    assert ddp_losses == pytest.approx(single_losses, rel=1e-3)
