"""The engine facade the HTTP layer talks to: validate → tokenize (off-loop) → batch → early-exit run."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mipic.service.engine.batcher import Batcher, BatchStats
from mipic.service.engine.errors import InvalidRequest, NotReady
from mipic.service.engine.model import LoadedModel, Row
from mipic.service.settings import Settings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmbedResult:
    vectors: list[np.ndarray]
    dim: int
    layer: int
    model_id: str
    model_version: str
    tokens: int
    tokenization_seconds: float
    queue_seconds: float
    inference_seconds: float


class Engine:
    """Owns the served model, the tokenizer pool and the batcher."""

    def __init__(self, settings: Settings, on_batch: Callable[[BatchStats], None] | None = None) -> None:
        self.settings = settings
        self._model: LoadedModel | None = None
        self._tokenize_pool = ThreadPoolExecutor(
            max_workers=settings.tokenizer_threads, thread_name_prefix="mipic-tok"
        )
        self.batcher = Batcher(
            max_batch_tokens=settings.max_batch_tokens,
            max_batch_size=settings.max_batch_size,
            max_wait_ms=settings.max_wait_ms,
            max_queue_size=settings.max_queue_size,
            on_batch=on_batch,
        )
        self.ready = False

    # ------------------------------------------------------------------ lifecycle

    def load(self, model_dir: Path) -> LoadedModel:
        """Load (and checksum-verify) a model version; does not make it current."""
        s = self.settings
        return LoadedModel(
            model_dir,
            provider=s.provider,
            intra_op_threads=s.intra_op_threads,
            inter_op_threads=s.inter_op_threads,
            max_seq_length=s.max_seq_length,
            truncate=s.truncate,
            verify_checksums=s.verify_checksums,
        )

    async def start(self, model_dir: Path) -> None:
        self.batcher.start()
        model = await asyncio.to_thread(self.load, model_dir)
        if self.settings.warmup:
            await self.batcher.run_sync(model.warmup)
        self._model = model
        self.ready = True
        logger.info("serving %s from %s on %s", model.model_id, model_dir, model.runtime.provider)

    async def stop(self) -> None:
        self.ready = False
        await self.batcher.stop()
        self._tokenize_pool.shutdown(wait=False, cancel_futures=True)
        if self._model is not None:
            self._model.close()

    @property
    def model(self) -> LoadedModel:
        if self._model is None:
            raise NotReady("model is not loaded yet")
        return self._model

    # ------------------------------------------------------------------ requests

    async def embed(
        self, texts: list[str], dim: int | None, layer: int | None, dim_param: str = "dim"
    ) -> EmbedResult:
        """Embed texts at one (dim, layer) budget. Raises an :class:`EngineError` subclass on bad input."""
        model = self.model  # pinned: a reload during this request does not change its version
        d, ly = model.resolve_budget(dim, layer, dim_param)
        if not texts:
            raise InvalidRequest("input must not be empty", param="input")
        t0 = time.perf_counter()
        encoded = await asyncio.get_running_loop().run_in_executor(
            self._tokenize_pool, model.tokenizer.encode, texts
        )
        t_tok = time.perf_counter() - t0
        rows = [Row(ids=e.ids, dim=d, layer=ly) for e in encoded]
        futures = self.batcher.submit(model, rows, self.settings.request_timeout_ms / 1000.0)
        try:
            results = await asyncio.gather(*futures)
        except BaseException:
            for f in futures:  # dropped before compute if still queued
                f.cancel()
            raise
        return EmbedResult(
            vectors=[r.vector for r in results],
            dim=d,
            layer=ly,
            model_id=model.model_id,
            model_version=model.version,
            tokens=sum(e.length for e in encoded),
            tokenization_seconds=t_tok,
            queue_seconds=max(r.queue_seconds for r in results),
            inference_seconds=max(r.inference_seconds for r in results),
        )
