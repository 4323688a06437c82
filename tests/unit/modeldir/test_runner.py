"""The early-exit runner: reference equality at every (layer, dim), batching invariances, real early exit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tests.conftest import TINY_DIMS, TINY_LAYERS

from mipic.modeldir.runner import LoadedModel, Row
from mipic.service.engine.errors import InvalidBudget

TEXTS = [
    "the quick brown fox jumps over the lazy dog",
    "a cat",
    "embed this text at a short dim",
    "the dog is not a cat and the cat is not a dog and that is that for the model",
    "long text long text long text long text long text long text long text long text",
]


def torch_reference(tiny_torch_model, texts: list[str], layer: int, dim: int) -> np.ndarray:  # type: ignore[no-untyped-def]
    """Mean-pool hidden_states[layer] over valid tokens, keep the first dim values, L2-normalise."""
    import torch

    model, tokenizer, _ = tiny_torch_model
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hs = model(**batch, output_hidden_states=True).hidden_states[layer]
    m = batch["attention_mask"].unsqueeze(-1).float()
    pooled = (hs * m).sum(1) / m.sum(1)
    cut = pooled[:, :dim]
    return (cut / cut.norm(dim=1, keepdim=True)).numpy()


@pytest.fixture(scope="module")
def loaded(tiny_model_dir: Path) -> LoadedModel:
    return LoadedModel(tiny_model_dir, provider="cpu")


def rows(model: LoadedModel, texts: list[str], dim: int, layer: int) -> list[Row]:
    return [Row(ids=e.ids, dim=dim, layer=layer) for e in model.tokenizer.encode(texts)]


@pytest.mark.parametrize("layer", range(1, TINY_LAYERS + 1))
@pytest.mark.parametrize("dim", TINY_DIMS)
def test_vectors_equal_truncated_renormalised_torch_reference(loaded, tiny_torch_model, layer, dim) -> None:  # type: ignore[no-untyped-def]
    got = np.stack(loaded.run(rows(loaded, TEXTS, dim, layer)))
    assert got.shape == (len(TEXTS), dim)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(got, torch_reference(tiny_torch_model, TEXTS, layer, dim), atol=2e-5)


def test_batched_equals_one_by_one(loaded: LoadedModel) -> None:
    batched = loaded.run(rows(loaded, TEXTS, 16, 2))
    single = [loaded.run(rows(loaded, [t], 16, 2))[0] for t in TEXTS]
    for a, b in zip(batched, single, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_mixed_budget_batch_equals_single_budget_batches(loaded: LoadedModel) -> None:
    budgets = [(8, 1), (32, 3), (16, 2), (32, 1), (8, 3)]
    mixed_rows = [Row(ids=r.ids, dim=d, layer=ly)
                  for r, (d, ly) in zip(rows(loaded, TEXTS, 8, 1), budgets, strict=True)]
    mixed = loaded.run(mixed_rows)
    for i, (d, ly) in enumerate(budgets):
        alone = loaded.run(rows(loaded, TEXTS, d, ly))[i]  # same text in a single-budget batch
        assert mixed[i].shape == (d,)
        np.testing.assert_allclose(mixed[i], alone, atol=1e-5)


class CountingRuntime:
    def __init__(self, inner) -> None:  # type: ignore[no-untyped-def]
        self.inner = inner
        self.calls: list[tuple[int, int, int]] = []  # (layer, rows, width)

    def embed(self, ids):  # type: ignore[no-untyped-def]
        return self.inner.embed(ids)

    def layer(self, index, states, mask, last=False):  # type: ignore[no-untyped-def]
        self.calls.append((index, states.shape[0], states.shape[1]))
        return self.inner.layer(index, states, mask, last)


def test_early_exit_runs_only_the_needed_layers(tiny_model_dir: Path) -> None:
    model = LoadedModel(tiny_model_dir, provider="cpu")
    counter = CountingRuntime(model.runtime)
    model.runtime = counter  # type: ignore[assignment]
    model.run(rows(model, TEXTS[:2], 32, 1))
    assert [c[0] for c in counter.calls] == [1]
    counter.calls.clear()
    # mixed: the long row exits at layer 1, the short ones continue; later layers see fewer rows
    # and only the width of the longest remaining row
    rs = rows(model, ["long text long text long text long text", "a cat", "the dog"], 32, 3)
    rs[0] = Row(ids=rs[0].ids, dim=32, layer=1)
    model.run(rs)
    assert counter.calls[0] == (1, 3, rs[0].ids.shape[0])
    assert counter.calls[1][:2] == (2, 2) and counter.calls[2][:2] == (3, 2)
    assert counter.calls[1][2] == max(rs[1].ids.shape[0], rs[2].ids.shape[0])


def test_budget_validation(loaded: LoadedModel) -> None:
    assert loaded.resolve_budget(None, None) == (TINY_DIMS[-1], TINY_LAYERS)
    with pytest.raises(InvalidBudget, match="dim=12 is not served"):
        loaded.resolve_budget(12, 1)
    with pytest.raises(InvalidBudget, match="dim=64"):
        loaded.resolve_budget(64, 1)
    with pytest.raises(InvalidBudget, match="layer=0 must be between 1 and 3"):
        loaded.resolve_budget(8, 0)
    with pytest.raises(InvalidBudget, match="layer=4"):
        loaded.resolve_budget(8, 4)
    with pytest.raises(InvalidBudget) as err:
        loaded.resolve_budget(12, 1)
    assert err.value.field == "dim"  # the key: each HTTP surface says its own name for it


def test_long_inputs_truncated_or_rejected(tiny_model_dir: Path) -> None:
    from mipic.service.engine.errors import InputTooLong

    text = "the cat " * 100
    model = LoadedModel(tiny_model_dir, provider="cpu", max_seq_length=16)
    enc = model.tokenizer.encode([text])[0]
    assert enc.length == 16 and enc.truncated
    strict = LoadedModel(tiny_model_dir, provider="cpu", max_seq_length=16, truncate=False)
    with pytest.raises(InputTooLong, match="longer than the maximum of 16 tokens"):
        strict.tokenizer.encode(["a cat", text])


def test_sub_batches_stay_within_token_and_token_pair_limits(tiny_model_dir: Path) -> None:
    """Long rows are cut into sub-batches by padded tokens (B·T) and attention's token pairs (B·T²);
    the vectors do not change."""
    texts = [" ".join(["the cat"] * (3 + i)) for i in range(12)]  # 8..30 tokens
    reference = LoadedModel(tiny_model_dir, provider="cpu")
    capped = LoadedModel(tiny_model_dir, provider="cpu", max_batch_tokens=64, max_batch_token_pairs=2000)
    counter = CountingRuntime(capped.runtime)
    capped.runtime = counter  # type: ignore[assignment]
    got = capped.run(rows(capped, texts, 16, 1))
    want = reference.run(rows(reference, texts, 16, 1))
    assert counter.calls and sum(c[1] for c in counter.calls) == len(texts)
    for _, n, width in counter.calls:
        assert n == 1 or (n * width <= 64 and n * width * width <= 2000), (n, width)
    assert max(c[1] for c in counter.calls) > 1  # short rows still share a sub-batch
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_a_row_longer_than_the_limits_still_runs_alone(tiny_model_dir: Path) -> None:
    model = LoadedModel(tiny_model_dir, provider="cpu", max_batch_tokens=4, max_batch_token_pairs=4)
    counter = CountingRuntime(model.runtime)
    model.runtime = counter  # type: ignore[assignment]
    out = model.run(rows(model, TEXTS[:3], 8, 1))
    assert [c[1] for c in counter.calls] == [1, 1, 1] and all(v.shape == (8,) for v in out)


def test_sub_batch_limits_must_be_positive(tiny_model_dir: Path) -> None:
    with pytest.raises(ValueError, match="must be positive, got 0 and 10"):
        LoadedModel(tiny_model_dir, provider="cpu", max_batch_tokens=0, max_batch_token_pairs=10)


@pytest.mark.parametrize("arena", ["shared", "off", "per-session"])
def test_every_arena_choice_gives_the_same_vectors(tiny_model_dir: Path, loaded: LoadedModel, arena: str) -> None:
    model = LoadedModel(tiny_model_dir, provider="cpu", arena=arena)  # type: ignore[arg-type]
    assert model.runtime.arena == arena
    budgets = [(8, 1), (32, 3), (16, 2), (32, 1), (8, 3)]
    mixed = [Row(ids=r.ids, dim=d, layer=ly) for r, (d, ly) in zip(rows(model, TEXTS, 8, 1), budgets, strict=True)]
    for a, b in zip(model.run(mixed), loaded.run(mixed), strict=True):
        np.testing.assert_array_equal(a, b)


def _arena_spy(model_dir: Path, idle_s: float = 0.0) -> tuple[LoadedModel, list[tuple[int, bool]]]:
    """A model with a 40-token keep threshold whose layer calls are recorded as (layer, hands the arena back);
    growth handed back at the end of a call (``idle_s`` 0) or after that idle time."""
    model = LoadedModel(model_dir, provider="cpu", arena_keep_tokens=40, arena_idle_release_s=idle_s)
    calls: list[tuple[int, bool]] = []
    real = model.runtime.layer

    def spy(index: int, states: np.ndarray, mask: np.ndarray, last: bool = False) -> np.ndarray:
        calls.append((index, last))
        return real(index, states, mask, last=last)

    model.runtime.layer = spy  # type: ignore[method-assign]
    return model, calls


def test_the_shared_arena_is_handed_back_only_after_large_sub_batches(tiny_model_dir: Path) -> None:
    """Small sub-batches keep the arena for the next one (no page faults every batch); one above the keep
    threshold hands back what it grew it by, at its last stage only."""
    model, calls = _arena_spy(tiny_model_dir)
    small = [Row(ids=np.array([1, 5, 6, 2]), dim=model.manifest.dims[0], layer=2)] * 4  # 4 × 4 = 16 tokens
    model.run(small)
    assert [last for _, last in calls] == [False, False]
    calls.clear()
    large = [Row(ids=np.array([1, *range(5, 13), 2]), dim=model.manifest.dims[0], layer=2)] * 8  # 8 × 10 = 80
    model.run(large)
    assert calls == [(1, False), (2, True)]
    assert model._large(5, 10) and not model._large(4, 10)  # above the threshold, not at it
    model.close()


def test_a_busy_caller_keeps_the_arena_until_its_first_call_without_more(tiny_model_dir: Path) -> None:
    """``more=True`` (a server with more batches queued) keeps what a large sub-batch grew the arena by; the
    next call without it hands it back at its last stage even when that batch is small; sub-batches of one
    call hand it back once, at the end of the last."""
    model, calls = _arena_spy(tiny_model_dir)
    dim = model.manifest.dims[0]
    large = [Row(ids=np.array([1, *range(5, 13), 2]), dim=dim, layer=2)] * 8  # 80 padded tokens > 40
    small = [Row(ids=np.array([1, 5, 6, 2]), dim=dim, layer=2)] * 4
    model.run(large, more=True)
    model.run(large, more=True)
    assert not any(last for _, last in calls)
    calls.clear()
    model.run(small)  # small, but the arena still holds the large batches' growth
    assert calls == [(1, False), (2, True)]
    calls.clear()
    model.run(small)  # nothing held any more: a small batch keeps the arena as before
    assert not any(last for _, last in calls)
    calls.clear()
    # one call of several large sub-batches (different lengths are cut apart): handed back once, at the end
    mixed = large + [Row(ids=np.array([1, *range(5, 30), 2]), dim=dim, layer=2)] * 8
    assert len(model.sub_batches([r.ids.shape[0] for r in mixed])) == 2
    model.run(mixed)
    assert calls == [(1, False), (2, False), (1, False), (2, True)]
    calls.clear()
    # the offline all-layers pass follows the same rule: it hands back growth a busy call left held
    model.run(large, more=True)
    model.pool_all_layers([r.ids for r in small], [1, 2])
    assert calls == [(1, False), (2, False), (1, False), (2, True)]
    model.close()


def _release_spy(model: LoadedModel) -> list[float]:
    """Record when the runtime's out-of-batch arena release runs (and still run it)."""
    import time

    released: list[float] = []
    real = model.runtime.release_arena

    def spy() -> None:
        released.append(time.monotonic())
        real()

    model.runtime.release_arena = spy  # type: ignore[method-assign]
    return released


def test_large_growth_is_handed_back_after_the_idle_time_not_during_a_loop(tiny_model_dir: Path) -> None:
    """With an idle time, no call hands the arena back at its last stage: back-to-back large calls reuse it, and
    the growth goes back once, by the timer, that long after the last call; a small call keeps nothing to
    release; close() cancels a pending release."""
    import time

    model, calls = _arena_spy(tiny_model_dir, idle_s=0.3)
    released = _release_spy(model)
    dim = model.manifest.dims[0]
    large = [Row(ids=np.array([1, *range(5, 13), 2]), dim=dim, layer=2)] * 8  # 80 padded tokens > 40
    small = [Row(ids=np.array([1, 5, 6, 2]), dim=dim, layer=2)] * 4
    first = model.run(large)
    for _ in range(3):
        again = model.run(large)
    assert not any(last for _, last in calls) and released == []  # each call re-arms the timer
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    end = time.monotonic()
    deadline = end + 10.0
    while not released and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(released) == 1 and released[0] - end >= 0.29
    assert not model._arena_grown
    model.run(small)  # below the threshold: nothing held, no timer
    time.sleep(0.5)
    assert len(released) == 1 and model._idle_timer is None
    # the offline multi-budget pass defers the same way, and close() cancels the pending release
    model.run_budgets([r.ids for r in large], [(dim, 1), (dim, 2)])
    assert model._idle_timer is not None and not any(last for _, last in calls)
    model.close()
    time.sleep(0.5)
    assert len(released) == 1


def test_an_idle_release_armed_before_a_later_call_does_nothing(tiny_model_dir: Path) -> None:
    """A timer that fires after a newer call began (it raced the cancel) leaves the newer call's growth alone."""
    model, _ = _arena_spy(tiny_model_dir, idle_s=30.0)
    released = _release_spy(model)
    large = [Row(ids=np.array([1, *range(5, 13), 2]), dim=model.manifest.dims[0], layer=2)] * 8
    model.run(large)
    stale = model._calls
    model.run(large)
    model._idle_release(stale)
    assert released == [] and model._arena_grown
    model._idle_release(model._calls)
    assert len(released) == 1 and not model._arena_grown
    model.close()


def test_no_idle_release_is_armed_for_arenas_that_are_not_shared(tiny_model_dir: Path) -> None:
    model = LoadedModel(tiny_model_dir, provider="cpu", arena="per-session", arena_keep_tokens=40,
                        arena_idle_release_s=30.0)
    model.run([Row(ids=np.array([1, *range(5, 13), 2]), dim=model.manifest.dims[0], layer=2)] * 8)
    assert model._idle_timer is None
    model.close()


def test_close_does_not_wait_for_a_call_in_progress(tiny_model_dir: Path) -> None:
    """A server stopping at its drain deadline closes the model while the worker thread still runs a batch:
    close() returns at once (it used to block the event loop until the batch ended), and the call that was
    running arms no idle release afterwards."""
    import threading
    import time

    model, _ = _arena_spy(tiny_model_dir, idle_s=0.2)
    released = _release_spy(model)
    entered, go_on = threading.Event(), threading.Event()
    real = model.runtime.embed

    def slow_embed(ids: np.ndarray) -> np.ndarray:
        entered.set()
        go_on.wait(10)
        return real(ids)

    model.runtime.embed = slow_embed  # type: ignore[method-assign]
    large = [Row(ids=np.array([1, *range(5, 13), 2]), dim=model.manifest.dims[0], layer=2)] * 8
    errors: list[BaseException] = []

    def work() -> None:
        try:
            model.run(large)
        except BaseException as exc:  # the sessions are gone under it: what onnxruntime says is not the point
            errors.append(exc)

    worker = threading.Thread(target=work)
    worker.start()
    assert entered.wait(10)
    t0 = time.monotonic()
    model.close()
    assert time.monotonic() - t0 < 0.5
    go_on.set()
    worker.join(10)
    time.sleep(0.4)
    assert model._idle_timer is None and released == []


def test_the_idle_time_must_not_be_negative(tiny_model_dir: Path) -> None:
    with pytest.raises(ValueError, match="arena_idle_release_s must be >= 0, got -1"):
        LoadedModel(tiny_model_dir, provider="cpu", arena_idle_release_s=-1)


def test_one_global_thread_pool_per_process(tiny_model_dir: Path) -> None:
    """``threads="global"``: the first model sizes the process's global pool; every later model uses it too
    (onnxruntime refuses per-session pools once it exists); vectors do not depend on where the threads live.
    (Own process: the global pool is process-wide and made once.)"""
    import subprocess
    import sys

    code = f"""
import numpy as np
from pathlib import Path
from mipic.modeldir.runner import LoadedModel, Row
d = Path({str(tiny_model_dir)!r})
a = LoadedModel(d, provider="cpu", threads="global")
b = LoadedModel(d, provider="cpu", threads="global", intra_op_threads=1)
c = LoadedModel(d, provider="cpu")
ids = [e.ids for e in a.tokenizer.encode(["a cat sat on the mat", "the dog"])]
rows = [Row(ids=i, dim=a.manifest.dims[-1], layer=2) for i in ids]
print(a.runtime.threads, b.runtime.threads, c.runtime.threads, *np.stack(a.run(rows)).ravel())
"""
    per_session = LoadedModel(tiny_model_dir, provider="cpu")  # this process: per-session pools
    ids = [e.ids for e in per_session.tokenizer.encode(["a cat sat on the mat", "the dog"])]
    expected = np.stack(per_session.run([Row(ids=i, dim=per_session.manifest.dims[-1], layer=2) for i in ids]))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    threads_a, threads_b, threads_c, *values = out.stdout.split()
    assert (threads_a, threads_b, threads_c) == ("global", "global", "global")
    np.testing.assert_allclose(np.array(values, dtype=np.float32).reshape(expected.shape), expected, atol=1e-5)
    assert per_session.runtime.threads == "per-session"
    per_session.close()
