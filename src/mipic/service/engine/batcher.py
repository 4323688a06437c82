"""The owner of the hot path: a bounded queue, one batching task, one inference thread.

Requests put tokenized rows on the queue and await futures. A single asyncio task cuts batches by a
padded-token budget, a padded token-pair budget (attention's T² term), a row limit and a maximum wait, and
runs each batch on a dedicated worker thread. A batch takes rows from the queued requests in turn, one row
each per round, oldest request first: a small request that arrives behind a large one rides in the next batch
instead of waiting for every row of the large one. Rows whose request was cancelled (client gone) or whose
deadline passed are dropped before they cost compute. A full queue refuses at once (the HTTP layer answers
429). A request with a latency target (adaptive depth's ``max_latency_ms``: ``answer_by``) whose rows the batch
being cut would finish after it is shed there with 429, with all its rows, before it costs compute: under
overload the queue's work is only an estimate when the request is admitted, and a row computed past its target is
compute the requests behind it needed (measured at 5x saturation: without this only 44 % of the admitted answers
came within the target).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import itertools
import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mipic.modeldir.runner import DEFAULT_MAX_BATCH_TOKEN_PAIRS, LoadedModel, Row
from mipic.service.engine.depth import LoadMeter
from mipic.service.engine.errors import DeadlineExceeded, Draining, InferenceFailed, Overloaded

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RowResult:
    vector: np.ndarray  # (dim,) float32, unit length
    queue_seconds: float
    inference_seconds: float


@dataclass
class WorkItem:
    row: Row
    model: LoadedModel
    future: asyncio.Future[RowResult]
    enqueued_at: float
    deadline: float
    started_at: float = 0.0
    units: float = 0.0  # work in full-depth tokens (``depth.StageCosts.units``): what ``load.queued_units`` sums
    answer_by: float = float("inf")  # the request's latency target (perf_counter time): shed when a batch would miss it
    request: int = 0  # which ``submit`` call the row came from (its rows are shed together)


@dataclass
class PendingRequest:
    """The rows of one ``submit`` call not taken into a batch yet, in order."""

    model: LoadedModel
    items: collections.deque[WorkItem]


@dataclass(frozen=True)
class BatchStats:
    """What one executed batch looked like; reported to metrics by the observer."""

    model_version: str
    size: int
    padded_tokens: int
    queue_seconds: list[float] = field(default_factory=list)
    inference_seconds: float = 0.0


class Batcher:
    def __init__(
        self,
        max_batch_tokens: int,
        max_batch_size: int,
        max_wait_ms: float,
        max_queue_size: int,
        on_batch: Callable[[BatchStats], None] | None = None,
        max_batch_token_pairs: int = DEFAULT_MAX_BATCH_TOKEN_PAIRS,
        seconds_per_unit: float = 2e-4,
    ) -> None:
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_token_pairs = max_batch_token_pairs
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000.0
        self.max_queue_size = max_queue_size
        self._on_batch = on_batch
        self._requests: collections.deque[PendingRequest] = collections.deque()  # arrival order
        self._queued = 0  # rows in ``_requests``
        self._reserved = 0  # rows admitted by ``reserve`` and not submitted yet (being tokenized)
        self._wakeup = asyncio.Event()
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mipic-infer")
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._in_flight = 0  # rows in the batch being executed
        self._submitted = 0  # ``submit`` calls so far (``WorkItem.request``)
        self.shed_rows = 0  # rows shed because a batch would have answered them past ``answer_by``
        # for adaptive depth (depth.py): work queued and running, measured speed
        self.load = LoadMeter(self.max_wait_s, seconds_per_unit)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="mipic-batcher")

    async def stop(self) -> None:
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for item in self._rows():
            if not item.future.done():
                item.future.set_exception(Draining("server is shutting down"))
        self._requests.clear()
        self._queued = 0
        self.load.queued_units = 0.0
        # Not waiting for a batch still running: shutdown must finish within the drain budget, and that
        # batch's requests have been answered already (drain deadline) or cancelled.
        self._worker.shutdown(wait=False, cancel_futures=True)

    @property
    def depth(self) -> int:
        return self._queued

    @property
    def busy(self) -> bool:
        return self._queued > 0 or self._in_flight > 0 or self._reserved > 0

    def _rows(self) -> Iterator[WorkItem]:
        """Queued rows, request by request in arrival order."""
        for request in self._requests:
            yield from request.items

    # ------------------------------------------------------------------ producer side

    @contextlib.contextmanager
    def reserve(self, n: int) -> Iterator[None]:
        """Admit ``n`` rows before they are tokenized: they count against the queue bound from here on, so an
        overloaded server refuses a request before spending tokenizer time on it, and admitted requests never
        wait in the tokenizer pool behind ones that will be refused. ``submit`` of those rows inside the block
        turns the reservation into queued rows; leaving the block (also by an exception) releases what is left.
        """
        if self._closing:
            raise Draining("server is shutting down")
        if self._queued + self._reserved + n > self.max_queue_size:
            raise Overloaded(f"queue is full ({self.max_queue_size} inputs); retry later")
        self._reserved += n
        try:
            yield
        finally:
            self._reserved -= n

    def submit(
        self, model: LoadedModel, rows: list[Row], timeout_s: float, reserved: bool = False,
        units: list[float] | None = None, answer_by: float | None = None,
    ) -> list[asyncio.Future[RowResult]]:
        """Queue rows (all or none) and return one future per row. ``reserved``: the rows were admitted by an
        enclosing :meth:`reserve` block, so they are not counted against the bound a second time. ``units``:
        each row's work in full-depth tokens, for adaptive depth's ``load`` (0 when not given). ``answer_by``:
        the request's latency target as a ``time.perf_counter()`` time; its rows fail with :class:`Overloaded`
        (all of them) when the batch that would take one is expected to finish after it."""
        if self._closing:
            raise Draining("server is shutting down")
        others = self._reserved - len(rows) if reserved else self._reserved
        if self._queued + others + len(rows) > self.max_queue_size:
            raise Overloaded(f"queue is full ({self.max_queue_size} inputs); retry later")
        loop = asyncio.get_running_loop()
        now = time.perf_counter()
        futures = []
        items: collections.deque[WorkItem] = collections.deque()
        self._submitted += 1
        target = float("inf") if answer_by is None else answer_by
        for i, row in enumerate(rows):
            fut: asyncio.Future[RowResult] = loop.create_future()
            items.append(WorkItem(row, model, fut, now, now + timeout_s, units=units[i] if units else 0.0,
                                  answer_by=target, request=self._submitted))
            futures.append(fut)
        if items:
            self._requests.append(PendingRequest(model, items))
            self._queued += len(items)
            self.load.queued_units += sum(item.units for item in items)
        self._wakeup.set()
        return futures

    async def run_sync(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn`` on the inference thread, serialised with batches (used for warm-up)."""
        return await asyncio.get_running_loop().run_in_executor(self._worker, fn, *args)

    # ------------------------------------------------------------------ consumer side

    async def _loop(self) -> None:
        while True:
            if not self._queued:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            await self._fill()
            batch = self._cut()
            if batch:
                await self._execute(batch)

    def _fits(self, rows: int, longest: int) -> bool:
        """Whether ``rows`` rows padded to ``longest`` tokens stay within the batch's token and token-pair
        budgets (the pairs, rows × longest², are attention's T² term: what bounds memory at long inputs)."""
        return (rows <= self.max_batch_size and rows * longest <= self.max_batch_tokens
                and rows * longest * longest <= self.max_batch_token_pairs)

    async def _fill(self) -> None:
        """Wait up to max_wait for more rows unless the batch is already full."""
        deadline = time.perf_counter() + self.max_wait_s
        while True:
            if self._full():
                return
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                return
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), timeout=remaining)
            except TimeoutError:
                return

    def _full(self) -> bool:
        """Whether the queue already holds more than one batch can take."""
        longest = 0
        for n, item in enumerate(self._rows(), start=1):
            longest = max(longest, item.row.ids.shape[0])
            if not self._fits(n + 1, longest):
                return True
        return False

    def _prune(self, now: float) -> None:
        """Drop rows nobody waits for (cancelled: the client went away) or past their deadline (504)."""
        for request in self._requests:
            kept: collections.deque[WorkItem] = collections.deque()
            for item in request.items:
                if item.future.done():
                    self.load.queued_units -= item.units
                    continue
                if now > item.deadline:
                    item.future.set_exception(DeadlineExceeded("request waited past its deadline in the queue"))
                    self.load.queued_units -= item.units
                    continue
                kept.append(item)
            self._queued -= len(request.items) - len(kept)
            request.items = kept
        self._requests = collections.deque(r for r in self._requests if r.items)

    def _cut(self) -> list[WorkItem]:
        """Take rows for one model version until the token, token-pair or row budget is reached: one row per
        queued request per round, oldest request first (rows of one request stay in order)."""
        now = time.perf_counter()
        self._prune(now)
        if not self._requests:
            return []
        model = self._requests[0].model
        eligible: list[PendingRequest] = []
        for request in self._requests:  # the requests for that version up to the first for another one
            if request.model is not model:
                break
            eligible.append(request)
        batch: list[WorkItem] = []
        longest = 0
        while any(r.items for r in eligible):
            for request in eligible:
                if not request.items:
                    continue
                item = request.items[0]
                new_longest = max(longest, item.row.ids.shape[0])
                if batch and not self._fits(len(batch) + 1, new_longest):
                    return self._taken(batch, now)
                request.items.popleft()
                batch.append(item)
                longest = new_longest
        return self._taken(batch, now)

    def _shed_late(self, batch: list[WorkItem], now: float) -> list[WorkItem]:
        """Fail the requests the batch would answer past their ``answer_by`` (all their rows: queued ones are
        pruned at the next cut) and return the rest of the batch. Expected finish: ``now`` + the batch's work at
        the measured seconds per unit + the event loop's lag (the answer is written on the loop)."""
        load = self.load
        finish = now + sum(item.units for item in batch) * load.seconds_per_unit + load.loop_lag_s
        late = {item.request for item in batch if item.answer_by < finish}
        if not late:
            return batch
        error = "cannot answer within its max_latency_ms target under the current load (shed before compute)"
        for item in itertools.chain(batch, self._rows()):
            if item.request in late and not item.future.done():
                item.future.set_exception(Overloaded(f"{error}; retry later"))
        kept = [item for item in batch if item.request not in late]
        self.shed_rows += len(batch) - len(kept)
        return kept

    def _taken(self, batch: list[WorkItem], now: float) -> list[WorkItem]:
        for item in batch:
            item.started_at = now
        self._queued -= len(batch)
        # (float sums drift: an empty queue holds exactly no work)
        load = self.load
        load.queued_units = max(0.0, load.queued_units - sum(i.units for i in batch)) if self._queued else 0.0
        self._requests = collections.deque(r for r in self._requests if r.items)
        return self._shed_late(batch, now)

    async def _execute(self, batch: list[WorkItem]) -> None:
        model = batch[0].model
        rows = [item.row for item in batch]
        self._in_flight = len(batch)
        units = sum(item.units for item in batch)
        t0 = time.perf_counter()
        self.load.batch_started(units, t0)
        try:
            # more rows for this model already wait: the engine keeps the memory this batch grows for them
            more = any(r.model is model for r in self._requests)
            vectors = await asyncio.get_running_loop().run_in_executor(
                self._worker, functools.partial(model.run, rows, more=more))
        except Exception:
            logger.exception("batch of %d rows failed on %s", len(batch), model.model_id)
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(InferenceFailed("the model failed on this batch"))
            return
        finally:
            self._in_flight = 0
            self.load.batch_ended()
        elapsed = time.perf_counter() - t0
        self.load.batch_timed(units, elapsed, len(batch))
        for item, vec in zip(batch, vectors, strict=True):
            if not item.future.done():
                item.future.set_result(RowResult(vec, item.started_at - item.enqueued_at, elapsed))
        if self._on_batch is not None:
            longest = max(r.ids.shape[0] for r in rows)
            self._on_batch(
                BatchStats(
                    model_version=model.version,
                    size=len(batch),
                    padded_tokens=longest * len(batch),
                    queue_seconds=[item.started_at - item.enqueued_at for item in batch],
                    inference_seconds=elapsed,
                )
            )
