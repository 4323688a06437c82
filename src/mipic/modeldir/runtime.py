"""The onnxruntime backend: one session per stage. The only module that imports onnxruntime."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import numpy as np
import onnxruntime as ort

from mipic.modeldir.manifest import Manifest

logger = logging.getLogger(__name__)

ProviderChoice = Literal["auto", "cpu", "cuda"]


def choose_providers(choice: ProviderChoice) -> list[str]:
    """CUDA when asked for (or ``auto`` and onnxruntime-gpu sees it), else CPU."""
    available = ort.get_available_providers()
    if choice == "cuda":
        if "CUDAExecutionProvider" not in available:
            raise RuntimeError(
                "provider=cuda but onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)"
            )
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if choice == "auto" and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class StagedRuntime:
    """Runs the embedding stage and encoder layers one at a time (synchronous; one worker thread calls it).

    States cross stages as host numpy arrays. On CUDA that is one host↔device copy of (B, T, H) per
    layer, which is small next to a layer's compute and lets rows leave the batch at their exit layer.
    """

    def __init__(
        self,
        model_dir: Path,
        manifest: Manifest,
        provider: ProviderChoice = "auto",
        intra_op_threads: int = 0,
        inter_op_threads: int = 1,
    ) -> None:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = intra_op_threads
        opts.inter_op_num_threads = inter_op_threads
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        # One session per stage means one thread pool per stage. Spinning pools keep burning the cores
        # after their stage is done and starve the next stage: measured 2-3x slower on 2 cores
        # (bench/results/engine_settings.md). Idle threads must sleep.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
        providers = choose_providers(provider)
        self._sessions = [
            ort.InferenceSession(str(model_dir / stage.path), opts, providers=providers)
            for stage in manifest.stages
        ]
        active = self._sessions[0].get_providers()
        self.provider = active[0] if active else "CPUExecutionProvider"
        self.num_layers = manifest.num_layers
        self._float = np.float16 if manifest.precision == "fp16" else np.float32
        logger.info("loaded %s with %d stages on %s", manifest.model_id, len(self._sessions), self.provider)

    def embed(self, input_ids: np.ndarray) -> np.ndarray:
        """(B, T) int64 → (B, T, H)."""
        (out,) = self._sessions[0].run(None, {"input_ids": input_ids})
        return np.asarray(out)

    def layer(self, index: int, states: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """Run encoder layer ``index`` (1-based): (B, T, H), (B, T) → (B, T, H)."""
        (out,) = self._sessions[index].run(
            None, {"hidden_states": states.astype(self._float, copy=False), "attention_mask": attention_mask}
        )
        return np.asarray(out)

    def close(self) -> None:
        self._sessions.clear()
