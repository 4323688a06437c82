"""The batcher: token-budget cuts, 429 on a full queue, cancelled and stale rows dropped unrun, failures contained."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from mipic.modeldir.runner import LoadedModel, Row
from mipic.service.engine.batcher import Batcher, BatchStats
from mipic.service.engine.errors import DeadlineExceeded, InferenceFailed, Overloaded


class FakeModel:
    """Stands in for LoadedModel: records what it ran, can block or fail on demand."""

    model_id = "fake@1"
    version = "1"

    def __init__(self) -> None:
        self.batches: list[list[int]] = []  # lengths of rows per batch
        self.gate = threading.Event()
        self.gate.set()
        self.fail_next = False
        self.more: list[bool] = []  # what each batch was told about the rows still queued for this model

    def run(self, rows: list[Row], more: bool = False) -> list[np.ndarray]:
        self.gate.wait(timeout=10)
        self.batches.append([int(r.ids[0]) for r in rows])
        self.more.append(more)
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("boom: /secret/path")
        return [np.full(r.dim, float(r.ids[0]), dtype=np.float32) for r in rows]


def row(tag: int, length: int = 4) -> Row:
    ids = np.full(length, tag, dtype=np.int64)
    return Row(ids=ids, dim=2, layer=1)


async def _batcher(**kw: float) -> Batcher:
    args = {"max_batch_tokens": 64, "max_batch_size": 8, "max_wait_ms": 5.0, "max_queue_size": 16}
    args.update(kw)
    b = Batcher(**args)  # type: ignore[arg-type]
    b.start()
    return b


async def test_rows_come_back_in_order_and_batches_respect_token_budget() -> None:
    model = FakeModel()
    stats: list[BatchStats] = []
    b = Batcher(max_batch_tokens=32, max_batch_size=8, max_wait_ms=20, max_queue_size=64, on_batch=stats.append)
    b.start()
    futs = b.submit(model, [row(i, length=8) for i in range(10)], timeout_s=5)  # type: ignore[arg-type]
    results = await asyncio.gather(*futs)
    assert [int(r.vector[0]) for r in results] == list(range(10))
    # 32 tokens / 8 per row → at most 4 rows per batch
    assert [len(bt) for bt in model.batches] == [4, 4, 2]
    assert all(s.padded_tokens <= 32 for s in stats)
    await b.stop()


async def test_a_batch_is_told_when_more_rows_for_its_model_wait() -> None:
    """``more`` (keep the memory this batch grows) while rows for the same model are still queued; the batch
    that empties the queue, and one followed only by another model's rows, hand it back."""
    model, other = FakeModel(), FakeModel()
    b = Batcher(max_batch_tokens=32, max_batch_size=8, max_wait_ms=20, max_queue_size=64)
    b.start()
    futs = b.submit(model, [row(i, length=8) for i in range(10)], timeout_s=5)  # type: ignore[arg-type]
    await asyncio.gather(*futs)
    assert [len(bt) for bt in model.batches] == [4, 4, 2] and model.more == [True, True, False]
    model.gate.clear()  # the first batch blocks while the rest queue up behind it
    first = b.submit(model, [row(0, length=8)], timeout_s=5)  # type: ignore[arg-type]
    await asyncio.sleep(0.05)
    second = b.submit(model, [row(1, length=8)], timeout_s=5)  # type: ignore[arg-type]
    third = b.submit(other, [row(2, length=8)], timeout_s=5)  # type: ignore[arg-type]
    model.gate.set()
    await asyncio.gather(*first, *second, *third)
    assert model.more[3:] == [False, False] and other.more == [False]
    await b.stop()


async def test_full_queue_refuses_at_once() -> None:
    model = FakeModel()
    model.gate.clear()  # the worker blocks: the queue fills up
    b = await _batcher(max_queue_size=4, max_batch_size=1, max_wait_ms=0)
    first = b.submit(model, [row(0)], timeout_s=5)  # type: ignore[arg-type]
    await asyncio.sleep(0.05)  # taken by the worker, which now blocks
    b.submit(model, [row(i) for i in range(1, 5)], timeout_s=5)  # type: ignore[arg-type]
    with pytest.raises(Overloaded, match="queue is full"):
        b.submit(model, [row(9)], timeout_s=5)  # type: ignore[arg-type]
    model.gate.set()
    await asyncio.gather(*first)
    await b.stop()


async def test_reservation_counts_against_the_bound_before_rows_are_queued() -> None:
    """Rows being tokenized already hold their place: a second request is refused while the first is still
    in the tokenizer, the reservation becomes queued rows on submit, and an error releases it."""
    model = FakeModel()
    model.gate.clear()
    b = await _batcher(max_queue_size=4, max_batch_size=1, max_wait_ms=0)
    with b.reserve(3):
        assert b.busy and b.depth == 0
        with pytest.raises(Overloaded, match="queue is full"), b.reserve(2):
            pass
        with b.reserve(1):  # exactly fills the bound
            pass
        futs = b.submit(model, [row(i) for i in range(3)], timeout_s=5, reserved=True)  # type: ignore[arg-type]
    with pytest.raises(Overloaded):  # 3 queued/in flight + 2 > 4
        b.submit(model, [row(7), row(8)], timeout_s=5)  # type: ignore[arg-type]
    with pytest.raises(ValueError), b.reserve(1):  # a tokenizer error releases the place
        raise ValueError("bad input")
    assert b._reserved == 0
    model.gate.set()
    assert [int(r.vector[0]) for r in await asyncio.gather(*futs)] == [0, 1, 2]
    with b.reserve(4):  # everything released: the whole bound is free again
        pass
    await b.stop()


async def test_cancelled_and_expired_rows_are_dropped_before_compute() -> None:
    model = FakeModel()
    model.gate.clear()
    b = await _batcher(max_batch_size=1, max_wait_ms=0)
    blocker = b.submit(model, [row(0)], timeout_s=5)  # type: ignore[arg-type]
    await asyncio.sleep(0.05)
    cancelled = b.submit(model, [row(1)], timeout_s=5)  # type: ignore[arg-type]
    stale = b.submit(model, [row(2)], timeout_s=0.01)  # type: ignore[arg-type]
    kept = b.submit(model, [row(3)], timeout_s=5)  # type: ignore[arg-type]
    cancelled[0].cancel()
    await asyncio.sleep(0.05)  # the stale row's deadline passes while it waits
    model.gate.set()
    await asyncio.gather(*blocker, *kept)
    with pytest.raises(DeadlineExceeded):
        await stale[0]
    assert model.batches == [[0], [3]]  # rows 1 and 2 never reached the model
    await b.stop()


async def test_a_failing_batch_fails_only_its_requests() -> None:
    model = FakeModel()
    b = await _batcher()
    model.fail_next = True
    bad = b.submit(model, [row(1), row(2)], timeout_s=5)  # type: ignore[arg-type]
    with pytest.raises(InferenceFailed) as exc:
        await asyncio.gather(*bad)
    assert "secret" not in str(exc.value)
    good = await asyncio.gather(*b.submit(model, [row(3)], timeout_s=5))  # type: ignore[arg-type]
    assert good[0].vector[0] == 3.0
    await b.stop()


async def test_batches_never_mix_model_versions(tiny_model_dir: Path) -> None:
    a, c = FakeModel(), FakeModel()
    b = await _batcher(max_wait_ms=20)
    futs = b.submit(a, [row(1)], 5) + b.submit(c, [row(2)], 5) + b.submit(a, [row(3)], 5)  # type: ignore[arg-type]
    await asyncio.gather(*futs)
    assert a.batches == [[1], [3]] and c.batches == [[2]]
    await b.stop()


async def test_engine_cancellation_drops_queued_rows(tiny_model_dir: Path) -> None:
    """A request cancelled while queued (client gone) never runs."""
    from mipic.service.engine.engine import Engine
    from mipic.service.settings import Settings

    engine = Engine(Settings(model_dir=tiny_model_dir, provider="cpu", max_wait_ms=0, max_batch_size=1,
                             warmup=False))
    await engine.start(tiny_model_dir)
    model: LoadedModel = engine.model
    ran: list[int] = []
    gate = threading.Event()
    real_run = model.run

    def slow_run(rows: list[Row], more: bool = False) -> list[np.ndarray]:
        gate.wait(timeout=10)
        ran.append(len(rows))
        return real_run(rows, more=more)

    model.run = slow_run  # type: ignore[method-assign]
    first = asyncio.ensure_future(engine.embed(["the cat"], 8, 1))
    await asyncio.sleep(0.1)
    second = asyncio.ensure_future(engine.embed(["a dog", "the fox"], 8, 1))
    await asyncio.sleep(0.1)
    second.cancel()
    gate.set()
    result = await first
    assert len(result.vectors) == 1
    await asyncio.sleep(0.1)
    assert ran == [1]
    await engine.stop()


async def test_batches_respect_the_token_pair_budget() -> None:
    """Attention's T² term: 4 rows of 8 tokens fit 64 tokens, but only 2 fit 128 token pairs."""
    model = FakeModel()
    stats: list[BatchStats] = []
    b = Batcher(max_batch_tokens=64, max_batch_size=8, max_wait_ms=20, max_queue_size=64, on_batch=stats.append,
                max_batch_token_pairs=128)
    b.start()
    futs = b.submit(model, [row(i, length=8) for i in range(5)], timeout_s=5)  # type: ignore[arg-type]
    await asyncio.gather(*futs)
    assert [len(bt) for bt in model.batches] == [2, 2, 1]
    await b.stop()


async def test_a_small_request_rides_in_the_next_batch_behind_a_large_one() -> None:
    """Rows are taken one per queued request per round: a 2-row request that arrives while a 12-row request
    is queued is done after the next batch, not after every row of the large one."""
    model = FakeModel()
    model.gate.clear()
    b = await _batcher(max_batch_size=4, max_wait_ms=0, max_queue_size=64)
    large = b.submit(model, [row(100 + i) for i in range(12)], timeout_s=5)  # type: ignore[arg-type]
    await asyncio.sleep(0.05)  # the first 4 rows are taken; the worker blocks on them
    small = b.submit(model, [row(1), row(2)], timeout_s=5)  # type: ignore[arg-type]
    model.gate.set()
    await asyncio.gather(*small)
    assert not all(f.done() for f in large)  # the small request did not wait for the whole large one
    await asyncio.gather(*large)
    assert model.batches[0] == [100, 101, 102, 103]
    assert model.batches[1] == [104, 1, 105, 2]  # interleaved, each request's rows in order
    assert sorted(t for bt in model.batches for t in bt) == sorted([*range(100, 112), 1, 2])
    await b.stop()


async def test_a_request_the_batch_would_answer_past_its_target_is_shed_before_compute() -> None:
    """``answer_by``: a batch expected to finish after a request's target sheds that request (429, all its rows,
    none computed); requests without a target, or whose target the batch makes, ride as usual."""
    model = FakeModel()
    b = await _batcher(max_batch_size=2, max_wait_ms=0)
    b.load.assume(1e-3)  # one unit = 1 ms: a row of 300 units takes 0.3 s
    now = time.perf_counter()
    late = b.submit(model, [row(1), row(2), row(3)], timeout_s=5,  # type: ignore[arg-type]
                    units=[300.0, 300.0, 300.0], answer_by=now + 0.1)
    plain = b.submit(model, [row(4)], timeout_s=5, units=[300.0])  # type: ignore[arg-type]
    roomy = b.submit(model, [row(5)], timeout_s=5, units=[1.0], answer_by=now + 5.0)  # type: ignore[arg-type]
    for fut in late:
        with pytest.raises(Overloaded, match="max_latency_ms"):
            await fut
    assert [int(r.vector[0]) for r in await asyncio.gather(*plain, *roomy)] == [4, 5]
    assert all(tag not in (1, 2, 3) for batch in model.batches for tag in batch)  # never computed
    assert b.shed_rows == 1  # one row was cut into the batch; the two still queued were dropped with it
    assert b.depth == 0
    await b.stop()
