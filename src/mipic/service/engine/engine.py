"""The engine facade the HTTP layer talks to: validate → tokenize (off-loop) → batch → early-exit run.

It also owns the model's lifecycle: load and verify a version, warm it, swap it in atomically (hot
reload), and drain on shutdown. Requests pin the model they started with, so a swap never changes a
request's version half-way, and the old version is released when its last batch is done.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mipic.modeldir.manifest import ManifestError
from mipic.modeldir.repository import ModelRepository, PointerState, RepositoryError, resolve_model_dir
from mipic.modeldir.runner import LoadedModel, Row
from mipic.modeldir.tokenizer import Direction
from mipic.service.engine.batcher import Batcher, BatchStats
from mipic.service.engine.depth import AutoDepth, DepthBounds, StageCosts, choose_layer
from mipic.service.engine.errors import (
    Draining,
    InvalidBudget,
    InvalidRequest,
    ModelRejected,
    NotReady,
    Overloaded,
    PointerInvalid,
)
from mipic.service.settings import Settings

logger = logging.getLogger(__name__)

# Weight of the newest auto-depth request in the measured/expected latency average, and its bounds.
_CORRECTION_ALPHA = 0.1
_CORRECTION_RANGE = (0.5, 20.0)
# How often the event loop's lag is sampled for adaptive depth (one timer; ~100 wake-ups per second).
_LAG_SAMPLE_S = 0.01


def _seconds_per_full_token(model: LoadedModel, fallback: float) -> float:
    """First estimate of one full-depth token's compute, from the manifest's timing batch ("32 texts x 32
    tokens"); the batcher corrects it after every batch, so a different machine only costs a few batches."""
    table = model.manifest.budgets
    if table is None or not table.stage_ms:
        return fallback
    numbers = [int(x) for x in table.timing_batch.replace("x", " ").split() if x.isdigit()]
    if len(numbers) != 2 or numbers[0] * numbers[1] == 0:
        return fallback
    return sum(table.stage_ms) / 1000.0 / (numbers[0] * numbers[1])


@dataclass(frozen=True)
class EmbedResult:
    vectors: list[np.ndarray]  # (dim,) float32 unit vectors, one per input
    outputs: dict[str, np.ndarray]  # output type → (N, dim) or (N, dim / 8) array, quantised with the pinned model
    dim: int
    layer: int
    model_id: str
    model_version: str
    tokens: int
    tokenization_seconds: float
    queue_seconds: float
    inference_seconds: float
    auto: bool = False  # the layer was chosen by the server (``layer: "auto"``)


class Engine:
    """Owns the served model, the tokenizer pool and the batcher."""

    def __init__(
        self,
        settings: Settings,
        on_batch: Callable[[BatchStats], None] | None = None,
        on_swap: Callable[[LoadedModel | None, LoadedModel], None] | None = None,
    ) -> None:
        self.settings = settings
        self._model: LoadedModel | None = None
        self._costs: dict[str, StageCosts] = {}  # model id → relative stage work (adaptive depth)
        self._on_swap = on_swap
        self._tokenize_pool = ThreadPoolExecutor(
            max_workers=settings.tokenizer_threads, thread_name_prefix="mipic-tok"
        )
        self.batcher = Batcher(
            max_batch_tokens=settings.max_batch_tokens,
            max_batch_token_pairs=settings.max_batch_token_pairs,
            max_batch_size=settings.max_batch_size,
            max_wait_ms=settings.max_wait_ms,
            max_queue_size=settings.max_queue_size,
            on_batch=on_batch,
        )
        self.ready = False
        # moving average of measured / expected latency of auto-depth requests (depth.choose_layer's correction)
        self._depth_correction = 1.0
        self.draining = False
        self.active_requests = 0
        self.repository: ModelRepository | None = None
        self._reload_lock = asyncio.Lock()
        self._watcher: asyncio.Task[None] | None = None
        self._lag_watch: asyncio.Task[None] | None = None
        self._last_rejected: Path | None = None
        # (raw CURRENT bytes, why it cannot be followed) at the last look: a fault is logged once per change
        self._pointer_seen: tuple[bytes | None, str | None] | None = None

    # ------------------------------------------------------------------ lifecycle

    def load(self, model_dir: Path) -> LoadedModel:
        """Load and verify a model version (checksums, golden vectors); does not make it current."""
        s = self.settings
        try:
            model = LoadedModel(
                model_dir,
                provider=s.provider,
                intra_op_threads=s.intra_op_threads,
                inter_op_threads=s.inter_op_threads,
                max_seq_length=s.max_seq_length,
                truncate=s.truncate,
                verify_checksums=s.verify_checksums,
                arena=s.onnx_arena,
                max_batch_tokens=s.max_batch_tokens,
                max_batch_token_pairs=s.max_batch_token_pairs,
                arena_keep_tokens=s.onnx_arena_keep_tokens,
                arena_idle_release_s=s.onnx_arena_idle_release_s,
                threads=s.onnx_thread_pool,
            )
            if s.verify_golden:
                model.verify_golden()
        except ManifestError as exc:
            logger.error("refusing model at %s: %s", model_dir, exc)
            # clients see the version's name, never a server path
            d = str(model_dir)
            reason = str(exc).replace(f"{d}: ", "").replace(f" in {d}", "").replace(d, model_dir.name)
            raise ModelRejected(f"model version {model_dir.name!r} refused: {reason}") from exc
        except Exception as exc:  # onnxruntime refusing a graph, unreadable files, ...
            logger.error("refusing model at %s: cannot load (%s)", model_dir, type(exc).__name__)
            raise ModelRejected(f"model version {model_dir.name!r} refused: cannot load its files") from exc
        return model

    async def start(self, path: Path) -> None:
        """Serve ``path``: a version directory, or a repository directory (its CURRENT version)."""
        self.batcher.start()
        model_dir, self.repository = resolve_model_dir(path)
        await self._swap_to(model_dir)
        self.ready = True
        if self.repository is not None and self.settings.watch_interval_s > 0:
            self._watcher = asyncio.get_running_loop().create_task(self._watch(), name="mipic-watch")

    async def stop(self) -> None:
        self.ready = False
        if self._lag_watch is not None:
            self._lag_watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._lag_watch
            self._lag_watch = None
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):  # it logs its own failures
                await self._watcher
        await self.batcher.stop()
        self._tokenize_pool.shutdown(wait=False, cancel_futures=True)
        if self._model is not None:
            self._model.close()
            self._model = None

    def _watch_lag_from_now(self) -> None:
        """Start sampling the event loop's lag (at the first auto-depth request: a server that never gets one
        keeps no timer waking its loop ~100 times a second)."""
        if self._lag_watch is None:
            self._lag_watch = asyncio.get_running_loop().create_task(self._watch_loop_lag(), name="mipic-loop-lag")

    async def _watch_loop_lag(self) -> None:
        """Sample the event loop's lag (how late a timer fires) for adaptive depth: under overload the queue is
        the loop itself, before any handler sees a request (depth.LoadMeter.loop_lagged)."""
        while True:
            t0 = time.perf_counter()
            await asyncio.sleep(_LAG_SAMPLE_S)
            self.batcher.load.loop_lagged(time.perf_counter() - t0 - _LAG_SAMPLE_S)

    async def _swap_to(self, model_dir: Path) -> LoadedModel:
        new = await asyncio.to_thread(self.load, model_dir)
        if self.settings.warmup:
            await asyncio.to_thread(new.warmup)
        load = self.batcher.load
        load.assume(_seconds_per_full_token(new, load.seconds_per_unit))
        old, self._model = self._model, new  # atomic for every coroutine on this loop
        if self._on_swap is not None:
            self._on_swap(old, new)
        logger.info("serving %s from %s on %s", new.model_id, model_dir, new.runtime.provider)
        # `old` is not closed: queued and running batches still hold it and finish on it; it is freed
        # when the last of them drops its reference.
        return new

    async def reload(self, path: Path | None = None) -> tuple[str, bool]:
        """Load the repository's CURRENT version (or ``path``) beside the served one and switch to it.

        Returns (model id now served, whether it changed). Raises :class:`PointerInvalid` when CURRENT
        cannot be followed and :class:`ModelRejected` when the new version fails verification; either way
        the old version keeps serving.
        """
        async with self._reload_lock:
            # Only names here, never the model object: a traceback kept by a log handler must not
            # keep a swapped-out model alive.
            served_id = self._model.model_id if self._model is not None else "nothing"
            repo = self.repository
            if path is not None:
                try:
                    target, repo = resolve_model_dir(path)
                except RepositoryError as exc:
                    raise PointerInvalid(str(exc)) from None
            elif repo is not None:
                state = await asyncio.to_thread(repo.pointer_state)
                self._note_pointer(state, served_id)
                if state.target is None:
                    raise PointerInvalid(f"{state.error}; still serving {served_id}")
                target = state.target
            else:
                target = self.model.model_dir
            if self._model is not None and self._model.model_dir.resolve() == target.resolve():
                self.repository = repo
                return served_id, False
            try:
                new = await self._swap_to(target)
            except ModelRejected as exc:
                self._last_rejected = target
                logger.error("refused model at %s (%s); still serving %s", target, exc.message, served_id)
                raise
            self.repository = repo
            self._last_rejected = None
            return new.model_id, True

    def _note_pointer(self, state: PointerState, served_id: str) -> bool:
        """Remember what CURRENT says; log one WARNING when it changed to something that cannot be followed.
        Returns whether it changed since the last look."""
        seen = (state.raw, state.error)
        changed = seen != self._pointer_seen
        self._pointer_seen = seen
        if changed and state.error is not None:
            logger.warning("%s; still serving %s", state.error, served_id)
        return changed

    async def _watch(self) -> None:
        """Follow the repository pointer until cancelled. A fault never stops it: a bad CURRENT is one
        WARNING per change, a refused version is not retried until the pointer moves."""
        while True:
            await asyncio.sleep(self.settings.watch_interval_s)
            try:
                await self._follow_pointer()
            except (ModelRejected, PointerInvalid):
                pass  # already logged; the old version keeps serving
            except Exception:  # a bug must not silently end hot reload for the life of the process
                logger.exception("model repository watcher failed; retrying in %.1f s",
                                 self.settings.watch_interval_s)

    async def _follow_pointer(self) -> None:
        repo = self.repository
        if repo is None:  # an explicit /admin/reload switched to a plain model directory
            return
        state = await asyncio.to_thread(repo.pointer_state)  # a shared volume may stall: off the loop
        served_id = self._model.model_id if self._model is not None else "nothing"
        changed = self._note_pointer(state, served_id)
        target = state.target
        if target is None:
            return
        if self._model is not None and target.resolve() == self._model.model_dir.resolve():
            return
        if not changed and self._last_rejected is not None and target.resolve() == self._last_rejected.resolve():
            return
        await self.reload()

    async def drain(self, timeout_s: float, others_done: Callable[[], bool] = lambda: True) -> bool:
        """Stop taking requests (503 ``draining``) and wait up to ``timeout_s`` for accepted ones (and
        ``others_done``, e.g. the HTTP server's requests still reading their bodies). True if all finished."""
        self.draining = True
        self.ready = False
        deadline = time.monotonic() + timeout_s
        while self.active_requests > 0 or self.batcher.busy or not others_done():
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.02)
        return True

    @property
    def model(self) -> LoadedModel:
        if self._model is None:
            raise NotReady("model is not loaded yet")
        return self._model

    # ------------------------------------------------------------------ requests

    def costs(self, model: LoadedModel) -> StageCosts:
        """Relative work per token at each exit of ``model``, from its measured stage timings."""
        costs = self._costs.get(model.model_id)
        if costs is None:
            m = model.manifest
            costs = StageCosts.from_stage_ms(m.budgets.stage_ms if m.budgets else [], m.num_layers)
            self._costs[model.model_id] = costs
        return costs

    def resolve_auto(self, model: LoadedModel, auto: AutoDepth | None) -> DepthBounds | None:
        """An auto-depth request's bounds and target, defaults filled and checked against ``model`` (400 naming
        the field)."""
        if auto is None:
            return None
        n = model.manifest.num_layers
        low = 1 if auto.min_layer is None else auto.min_layer
        high = n if auto.max_layer is None else auto.max_layer
        for name, value in (("min_layer", low), ("max_layer", high)):
            if not 1 <= value <= n:
                raise InvalidBudget(f"{name}={value} must be between 1 and {n}", field=name)
        if low > high:
            raise InvalidBudget(f"min_layer={low} is above max_layer={high}", field="min_layer")
        target_ms = self.settings.auto_max_latency_ms if auto.max_latency_ms is None else auto.max_latency_ms
        if not target_ms > 0:
            raise InvalidRequest(f"max_latency_ms={target_ms} must be above 0", field="max_latency_ms")
        return DepthBounds(low, high, target_ms / 1000.0)

    async def embed(
        self,
        texts: Sequence[str | Sequence[int]],
        dim: int | None,
        layer: int | AutoDepth | None,
        *,
        outputs: Sequence[str] = ("float",),
        truncate: bool | None = None,
        direction: Direction = "right",
    ) -> EmbedResult:
        """Embed texts (or token-id lists in the model's vocabulary) at one (dim, layer) budget, in each of
        ``outputs`` (``vector.quantize``). Raises an :class:`EngineError` subclass on bad input, before any
        compute, naming the field by its key (``dim``, ``layer``, ``output``, ``input[i]``). ``layer`` as
        :class:`AutoDepth`: the server picks the layer within its bounds (depth.py)."""
        if self.draining:
            raise Draining("server is shutting down; retry on another replica")
        model = self.model  # pinned: a reload during this request does not change its version
        auto = self.resolve_auto(model, layer if isinstance(layer, AutoDepth) else None)
        if auto is not None:
            self._watch_lag_from_now()
        d, ly = model.resolve_budget(dim, auto.max_layer if auto else layer if isinstance(layer, int) else None)
        candidates = range(auto.min_layer, auto.max_layer + 1) if auto else (ly,)
        for output in outputs:
            for candidate in candidates:  # every layer it may get must give this output
                model.check_output(d, candidate, output)
        if not texts:
            raise InvalidRequest("input must not be empty", field="input")
        self.active_requests += 1
        started = time.perf_counter()
        expected_s = 0.0
        try:
            if auto is not None:  # the queue ahead alone already too long: 429 before tokenizing anything
                self._pick_layer(self.costs(model), auto, 0, started)
            # admitted (or refused with 429) before the tokenizer spends anything on it
            with self.batcher.reserve(len(texts)):
                t0 = time.perf_counter()
                encoded = await asyncio.get_running_loop().run_in_executor(
                    self._tokenize_pool,
                    functools.partial(model.tokenizer.encode, texts, truncate=truncate, direction=direction),
                )
                t_tok = time.perf_counter() - t0
                load = self.batcher.load
                costs = self.costs(model)
                tokens = sum(e.length for e in encoded)
                if auto is not None:
                    ly, expected_s, alone_fits = self._pick_layer(costs, auto, tokens, started)
                rows = [Row(ids=e.ids, dim=d, layer=ly) for e in encoded]
                units = [costs.units(e.length, ly) for e in encoded]
                # an auto request's target runs from its arrival (the loop's lag before its handler ran counts);
                # the margin is left for writing the answer. One too large for the target on its own is served
                # at min_layer, late, as admitted: it is not shed either.
                answer_by = (started - load.loop_lag_s + self._shed_after(auto)
                             if auto is not None and alone_fits else None)
                futures = self.batcher.submit(model, rows, self.settings.request_timeout_ms / 1000.0,
                                              reserved=True, units=units, answer_by=answer_by)
                now = time.perf_counter()  # arrivals, for depth.utilisation
                if auto is not None:
                    load.auto_tokens.add(tokens, now)
                else:
                    load.fixed_units.add(sum(units), now)
            try:
                results = await asyncio.gather(*futures)
            except BaseException:
                for f in futures:  # dropped before compute if still queued
                    f.cancel()
                raise
        finally:
            self.active_requests -= 1
        if expected_s > 0:
            measured = (time.perf_counter() - started) / expected_s
            self._depth_correction += _CORRECTION_ALPHA * (measured - self._depth_correction)
            self._depth_correction = min(max(self._depth_correction, _CORRECTION_RANGE[0]), _CORRECTION_RANGE[1])
        vectors = [r.vector for r in results]
        stacked = np.stack(vectors)  # (N, dim)
        return EmbedResult(
            vectors=vectors,
            outputs={o: model.quantize(stacked, d, ly, o) for o in outputs},
            dim=d,
            layer=ly,
            model_id=model.model_id,
            model_version=model.version,
            tokens=tokens,
            tokenization_seconds=t_tok,
            queue_seconds=max(r.queue_seconds for r in results),
            inference_seconds=max(r.inference_seconds for r in results),
            auto=auto is not None,
        )

    def _pick_layer(self, costs: StageCosts, auto: DepthBounds, tokens: int,
                    started: float) -> tuple[int, float, bool]:
        """The layer an auto-depth request gets now, its expected latency (s) and whether it fits the shedding
        deadline (:meth:`_shed_after`) on its own (with nothing ahead) at ``min_layer``; 429 when the queue ahead
        alone makes even ``min_layer`` miss its target (answering it late would break the deadline the client
        set). With ``tokens`` 0 (before tokenization), only that refusal counts: the request's own work only adds."""
        load, now = self.batcher.load, time.perf_counter()
        # what this request has spent already (the loop's lag before its handler ran, its tokenization) is
        # measured, not expected
        waited = load.loop_lag_s + now - started
        state = load.state(now)
        choice = choose_layer(state, costs, tokens, auto, self.settings.auto_depth_headroom,
                              self._depth_correction, self.settings.auto_max_utilisation, waited_s=waited)
        if choice.blocked_by_queue:
            raise Overloaded(f"cannot answer within max_latency_ms={auto.max_latency_s * 1000:g} even at layer "
                             f"{auto.min_layer} (expected {choice.expected_s * 1000:.0f} ms); retry later")
        alone = self._depth_correction * (state.fixed_s + costs.units(tokens, auto.min_layer) * state.seconds_per_unit)
        # the uncorrected expectation of what the correction measures (from `started` to the answer)
        return (choice.layer, (choice.expected_s - waited) / self._depth_correction + (now - started),
                alone <= self._shed_after(auto))

    def _shed_after(self, auto: DepthBounds) -> float:
        """Seconds from an auto request's arrival after which the batcher sheds it (the target less the margin
        kept for writing the answer); one that needs longer on its own is never shed."""
        return auto.max_latency_s * (1 - self.settings.auto_shed_margin)
