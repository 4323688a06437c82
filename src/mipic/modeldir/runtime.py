"""The onnxruntime backend: one session per stage. The only module that imports onnxruntime."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import threading
from pathlib import Path
from typing import Literal

import numpy as np
import onnxruntime as ort

from mipic.modeldir.manifest import Manifest

logger = logging.getLogger(__name__)

ProviderChoice = Literal["auto", "cpu", "cuda"]
# Where the CPU intermediates of a run come from:
#   shared       one arena for every stage session of the process, grown by what is asked (not by powers of
#                two) and shrunk after each batch, so a big batch does not pin its peak (and large freed NumPy
#                buffers are unmapped, see _fix_mmap_threshold);
#   off          plain malloc/free per tensor (glibc keeps much of what is freed);
#   per-session  onnxruntime's default: each session's own arena, each keeping its peak for good (one per
#                stage: 7 peaks for MiniLM; measured 6.3 GB after one batch of 64 x 256 tokens).
ArenaChoice = Literal["shared", "off", "per-session"]
# Where the stage sessions' operators find their threads:
#   per-session  one pool per stage session (onnxruntime's default), each sleeping when idle (spinning per-stage
#                pools starve the next stage's, measured 2-3x slower on 2 cores);
#   global       one intra-op pool for the whole process, shared by every stage session (onnxruntime's global
#                thread pool): a batch crosses the stages on the same threads, which spin briefly between
#                operators instead of being woken for each (onnxruntime's Python API cannot turn that off).
# Measured (bench/results/thread_pool.md): offline, global is 0.94-1.25x per-session (median 1.11) when the process
# has the cores alone, but 0.52-0.98x (median 0.81) with one other busy process on a core (spinning threads wait
# on a thread that is not running); over HTTP level to +10 %, inside the spread. So the default stays per-session.
ThreadPoolChoice = Literal["global", "per-session"]

_SHRINK = "memory.enable_memory_arena_shrinkage"
_shared_arena_lock = threading.Lock()
_shared_arena_registered = False
_global_pool: tuple[int, int] | None = None  # (intra, inter) of the global pools once made; (-1, -1): made elsewhere
# glibc: blocks above this are mmapped, so freeing them gives the pages back at once. Its default threshold grows
# (up to 32 MiB) after a large block is freed, so the (B, T, H) NumPy states stages hand each other (12 MiB at
# 32 x 256 tokens) would then come from the heap, which keeps what it grew to: measured +190 MB after one such
# batch, +70 MB with the threshold fixed here (offline, 32 x 256 tokens at layer 6).
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_BYTES = 1 << 20


def _fix_mmap_threshold() -> None:
    """Fix glibc's mmap threshold (a no-op where the C library has no ``mallopt``)."""
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None or not mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES):
        logger.debug("mallopt(M_MMAP_THRESHOLD) not available; freed NumPy buffers may stay in the heap")


def _use_global_pool(threads: ThreadPoolChoice, intra: int, inter: int) -> bool:
    """Whether this process's stage sessions run on onnxruntime's global thread pool.

    onnxruntime makes the global pools once per process, and from then on refuses any session with its own
    pools. So the first runtime asking for ``global`` sizes them (``intra``/``inter``), and every runtime after
    it uses them too, whatever it asked for (a warning says so when it asked for something else).
    """
    global _global_pool
    with _shared_arena_lock:
        if _global_pool is None and threads == "global":
            try:
                ort.set_global_thread_pool_sizes(intra, inter)
                _global_pool = (intra, inter)
            except Exception as exc:  # onnxruntime's Fail: something else in this process made them first
                logger.warning("onnxruntime's global thread pools already exist (%s); using them", exc)
                _global_pool = (-1, -1)
        if _global_pool is not None and (threads, intra, inter) != ("global", *_global_pool):
            logger.warning("this process's stage sessions share one global thread pool %s; %s threads (%d, %d) "
                           "asked for are not used", _global_pool, threads, intra, inter)
        return _global_pool is not None


def _register_shared_cpu_arena() -> None:
    """Register one CPU arena with onnxruntime's process-wide environment (once; sessions opt in)."""
    global _shared_arena_registered
    with _shared_arena_lock:
        if _shared_arena_registered:
            return
        info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
        # kSameAsRequested (1): a region per request, so shrinking can hand each one back once it is free;
        # kNextPowerOfTwo would round the peak up and never release its first region.
        ort.create_and_register_allocator(info, ort.OrtArenaCfg({"arena_extend_strategy": 1}))
        _fix_mmap_threshold()
        _shared_arena_registered = True


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
        arena: ArenaChoice = "shared",
        threads: ThreadPoolChoice = "per-session",
    ) -> None:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = intra_op_threads
        opts.inter_op_num_threads = inter_op_threads
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        # Per-session pools (threads="per-session") mean one thread pool per stage. Spinning pools keep burning
        # the cores after their stage is done and starve the next stage: measured 2-3x slower on 2 cores
        # (bench/results/engine_settings.md). Idle threads must sleep. (The global pool is one pool for every
        # stage, so onnxruntime's default for it, brief spinning, starves no other stage.)
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
        providers = choose_providers(provider)
        self.threads: ThreadPoolChoice = "per-session"
        if _use_global_pool(threads, intra_op_threads, inter_op_threads):
            opts.use_per_session_threads = False
            opts.intra_op_num_threads = opts.inter_op_num_threads = 0  # the pool's sizes, set above
            self.threads = "global"
        # A run that shrinks the arena when it ends: the last stage of a batch. Stages within a batch reuse
        # the memory the previous stage freed.
        self._release: ort.RunOptions | None = None
        if arena == "shared":
            _register_shared_cpu_arena()
            opts.add_session_config_entry("session.use_env_allocators", "1")
            self._release = ort.RunOptions()
            self._release.add_run_config_entry(_SHRINK, "cpu:0")
        elif arena == "off":
            opts.enable_cpu_mem_arena = False
        self.arena: ArenaChoice = arena
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

    def layer(self, index: int, states: np.ndarray, attention_mask: np.ndarray, last: bool = False) -> np.ndarray:
        """Run encoder layer ``index`` (1-based): (B, T, H), (B, T) → (B, T, H). ``last``: no later stage
        runs for this batch, so the shared arena hands back what the batch grew it by."""
        (out,) = self._sessions[index].run(
            None, {"hidden_states": states.astype(self._float, copy=False), "attention_mask": attention_mask},
            self._release if last else None,
        )
        return np.asarray(out)

    def release_arena(self) -> None:
        """Hand the shared arena's free regions back now, outside a batch: one run of the embedding stage on a
        single token with the shrinking run options (a few microseconds of compute). No-op for other arenas."""
        if self._release is not None and self._sessions:
            self._sessions[0].run(None, {"input_ids": np.zeros((1, 1), dtype=np.int64)}, self._release)

    def close(self) -> None:
        self._sessions.clear()
