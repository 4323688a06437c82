"""Adaptive depth: the exit layer a ``layer: "auto"`` request gets, from the queue and the measured stage costs.

A request that leaves its depth to the server gives bounds ``[min_layer, max_layer]`` and a latency target.
The server serves the deepest exit it expects to finish within the target:

    expected(l) = waited_s + fixed_s + (queued_units + running_units_left + own_tokens · w(l)) · seconds_per_unit

where ``waited_s`` is what the request has already spent (measured: the event loop's lag, its tokenization),
``fixed_s`` the batch-fill wait, ``w(l)`` the work of one token through the embeddings and layers 1..l relative
to the full depth (from the manifest's measured ``stage_ms``; ``w(L) = 1``), ``queued_units`` the same work
summed over the rows already queued (each at its own layer), ``running_units_left`` what is left of the batch
being run, and
``seconds_per_unit`` the measured time of one full-depth token, corrected online after every batch. The
chosen layer is the deepest ``l`` with ``expected(l) <= headroom · target`` (the headroom absorbs the
estimate's error) whose *sustained* load also fits:

    utilisation(l) = (fixed_units_per_s + auto_tokens_per_s · w(l)) · capacity_seconds_per_unit <= max_utilisation

with the arrival rates measured over the last second or so (fixed-layer requests' work as it is, auto requests'
tokens as if all were served at l). The queue alone reacts too late: a request that finds it empty goes deep,
and the batch it rides in delays everything behind it; near saturation latency grows as 1 / (1 - utilisation),
so the tail stays within the target only with the exit cheap enough for the traffic. When none makes it,
``min_layer``. When even ``min_layer`` misses the target because of the queue ahead or the time the request has
already spent (the event loop's lag before its handler ran, its tokenization; not because the request alone is
too large for it), the request is refused with 429 rather than answered late: the target is a deadline the
client chose. The same deadline is checked again when the request's rows are cut into a batch (the batcher's
``answer_by``, less ``auto_shed_margin`` of the target for writing the answer): an admitted request the batch
would finish late is shed there with 429 before it costs compute — under overload the queue ahead is only an
estimate at admission.

The numbers come from one place, :class:`LoadMeter` (the batcher holds it and reports its queue and batches; the
engine reports arrivals and samples the event loop's lag), whose :meth:`LoadMeter.state` the engine passes to
:func:`choose_layer`; everything else here is pure.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

# Weight of the newest batch in the moving averages of seconds per full-depth token.
_RATE_ALPHA = 0.2
# Batches at least this large also update the throughput estimate (small batches cost more per token: they
# say how long one request takes, not how much the compute can carry).
_CAPACITY_MIN_ROWS = 32
# Weight of the newest sample in the moving average of the event loop's lag.
_LAG_ALPHA = 0.5

# Relative work of the embeddings stage when a manifest has no measured stage timings (its cost is a lookup
# and a layer norm: about 1/25 of a MiniLM layer as measured).
_EMBED_WEIGHT_DEFAULT = 0.04


@dataclass(frozen=True)
class AutoDepth:
    """A request's depth left to the server, as asked: bounds and target, ``None`` = the server's default."""

    min_layer: int | None = None
    max_layer: int | None = None
    max_latency_ms: float | None = None


@dataclass(frozen=True)
class DepthBounds:
    """An auto-depth request's bounds (inclusive, validated against the model) and its target in seconds."""

    min_layer: int
    max_layer: int
    max_latency_s: float


@dataclass(frozen=True)
class StageCosts:
    """Cumulative relative work per token at each exit: ``cumulative[l]`` for l in 1..L (index 0 unused)."""

    cumulative: tuple[float, ...]

    @classmethod
    def from_stage_ms(cls, stage_ms: Sequence[float], num_layers: int) -> StageCosts:
        """From measured ms of [embeddings, layer 1, ..., layer L]; uniform layers when not measured."""
        if len(stage_ms) == num_layers + 1 and all(s > 0 for s in stage_ms):
            weights = [float(s) for s in stage_ms]
        else:
            weights = [_EMBED_WEIGHT_DEFAULT] + [1.0] * num_layers
        total = sum(weights)
        cum = [0.0]
        run = weights[0]
        for w in weights[1:]:
            run += w
            cum.append(run / total)
        return cls(tuple(cum))

    @property
    def num_layers(self) -> int:
        return len(self.cumulative) - 1

    def units(self, tokens: int, layer: int) -> float:
        """Work of one row of ``tokens`` tokens leaving at ``layer``, in full-depth tokens."""
        return tokens * self.cumulative[layer]


@dataclass(frozen=True)
class QueueState:
    """What is ahead of a new request, as the batcher measures it."""

    queued_units: float  # rows waiting for a batch, in full-depth tokens
    running_units_left: float  # the estimated rest of the batch being run
    seconds_per_unit: float  # measured seconds per full-depth token (moving average over batches)
    fixed_s: float = 0.0  # per-request time beyond compute still to come: the batch-fill wait
    fixed_units_per_s: float = 0.0  # arriving work of fixed-layer requests, full-depth tokens per second
    auto_tokens_per_s: float = 0.0  # arriving tokens of auto-depth requests per second
    capacity_seconds_per_unit: float | None = None  # seconds per full-depth token in large batches (throughput)


class RateMeter:
    """The rate of events (amount per second) over the last ``window_s``, unbiased from the start of a burst.

    A sliding window: the events of the last ``window_s`` summed, divided by the time they span — the whole
    window once the traffic is older than it, else the time since the first event of the current stretch (the
    window was empty before it), at least ``min_span_s``. An exponentially decaying average would start every
    burst near zero and reach the true rate only after a window or two; at a spike that is exactly when the
    depth choice matters (measured: the first ~2 s of a 3x-saturation burst went deep and built a queue that
    made 15 % of the answers late).
    """

    def __init__(self, window_s: float = 2.0, min_span_s: float = 0.5) -> None:
        self.window_s = window_s
        self.min_span_s = min_span_s
        self._events: deque[tuple[float, float]] = deque()
        self._sum = 0.0
        self._start = 0.0  # when the current stretch of traffic began

    def _expire(self, now: float) -> None:
        while self._events and self._events[0][0] <= now - self.window_s:
            self._sum -= self._events.popleft()[1]
        if not self._events:
            self._sum = 0.0  # no drift from float sums

    def add(self, amount: float, now: float) -> None:
        self._expire(now)
        if not self._events:
            self._start = now
        self._events.append((now, amount))
        self._sum += amount

    def rate(self, now: float) -> float:
        self._expire(now)
        if not self._events:
            return 0.0
        span = min(self.window_s, max(self.min_span_s, now - self._start))
        return self._sum / span


class LoadMeter:
    """What a :class:`QueueState` is made of, kept in one place. The batcher reports its queue (``queued_units``)
    and each batch it runs; the engine reports arrivals (``fixed_units``, ``auto_tokens``) and the event loop's lag.
    What a request has already spent (the lag, its own tokenization) is the engine's to measure per request
    (:func:`choose_layer`'s ``waited_s``), not part of the state."""

    def __init__(self, max_wait_s: float, seconds_per_unit: float = 2e-4) -> None:
        self.max_wait_s = max_wait_s  # the batch-fill wait, part of every request's time
        self.queued_units = 0.0  # rows waiting for a batch, in full-depth tokens (the batcher keeps it)
        self.running_units = 0.0  # the batch being run (0 between batches)
        self.running_since = 0.0
        self.seconds_per_unit = seconds_per_unit  # corrected after every batch that carried work units
        self.capacity_seconds_per_unit = seconds_per_unit  # the same, from large batches only
        self.loop_lag_s = 0.0  # moving average of the event loop's lag: how long a ready callback waits to run
        self.fixed_units = RateMeter()  # arriving work of fixed-layer requests
        self.auto_tokens = RateMeter()  # arriving tokens of auto-depth requests

    def assume(self, seconds_per_unit: float) -> None:
        """Start both speed estimates from ``seconds_per_unit`` (a new model's first estimate)."""
        self.seconds_per_unit = self.capacity_seconds_per_unit = seconds_per_unit

    def loop_lagged(self, seconds: float) -> None:
        """A timer on the event loop fired ``seconds`` late: a request arriving now waits about as long before
        its handler runs (HTTP parsing and routing queue behind the same callbacks)."""
        self.loop_lag_s += _LAG_ALPHA * (max(0.0, seconds) - self.loop_lag_s)

    def batch_started(self, units: float, now: float) -> None:
        self.running_units, self.running_since = units, now

    def batch_ended(self) -> None:
        self.running_units = 0.0

    def batch_timed(self, units: float, elapsed_s: float, rows: int) -> None:
        """A batch of ``rows`` rows and ``units`` of work ran in ``elapsed_s``: the speed estimates move toward it."""
        if units > 0:
            observed = elapsed_s / units
            self.seconds_per_unit += _RATE_ALPHA * (observed - self.seconds_per_unit)
            if rows >= _CAPACITY_MIN_ROWS:
                self.capacity_seconds_per_unit += _RATE_ALPHA * (observed - self.capacity_seconds_per_unit)

    def state(self, now: float) -> QueueState:
        """The work ahead of a request submitted at ``now`` and the measured load (for :func:`choose_layer`)."""
        left = 0.0
        if self.running_units > 0:
            expected = self.running_units * self.seconds_per_unit
            left = self.running_units * max(0.0, 1.0 - (now - self.running_since) / expected)
        return QueueState(self.queued_units, left, self.seconds_per_unit, self.max_wait_s,
                          fixed_units_per_s=self.fixed_units.rate(now), auto_tokens_per_s=self.auto_tokens.rate(now),
                          capacity_seconds_per_unit=self.capacity_seconds_per_unit)


@dataclass(frozen=True)
class DepthChoice:
    layer: int
    expected_s: float  # expected latency at ``layer``
    meets_target: bool  # expected_s <= headroom · target
    blocked_by_queue: bool  # min_layer misses the target only because of the work ahead


def expected_seconds(state: QueueState, costs: StageCosts, tokens: int, layer: int) -> float:
    ahead = state.queued_units + state.running_units_left
    return state.fixed_s + (ahead + costs.units(tokens, layer)) * state.seconds_per_unit


def utilisation(state: QueueState, costs: StageCosts, layer: int) -> float:
    """Share of the compute the measured arrivals would keep busy if auto requests were served at ``layer``."""
    spu = state.capacity_seconds_per_unit or state.seconds_per_unit
    return (state.fixed_units_per_s + state.auto_tokens_per_s * costs.cumulative[layer]) * spu


def choose_layer(state: QueueState, costs: StageCosts, tokens: int, bounds: DepthBounds,
                 headroom: float = 0.8, correction: float = 1.0, max_utilisation: float = 1.0,
                 waited_s: float = 0.0) -> DepthChoice:
    """The deepest layer in ``bounds`` expected within ``headroom · bounds.max_latency_s``, else ``min_layer``.

    ``tokens``: the request's tokens (all its rows). ``correction``: measured latency over expected latency of
    recent auto-depth requests (what the model above misses: event-loop and thread contention); every
    expectation is multiplied by it. ``max_utilisation``: the sustained load a layer may leave on the compute
    (:func:`utilisation`). ``waited_s``: what the request has spent already (in the event loop before its
    handler ran, tokenization), measured rather than expected, so not corrected; it counts against the target
    like the rest. Never outside ``[min_layer, max_layer]``.
    """
    if not 1 <= bounds.min_layer <= bounds.max_layer <= costs.num_layers:
        raise ValueError(f"bounds {bounds.min_layer}..{bounds.max_layer} outside 1..{costs.num_layers}")
    budget = headroom * bounds.max_latency_s
    for layer in range(bounds.max_layer, bounds.min_layer - 1, -1):
        expected = waited_s + correction * expected_seconds(state, costs, tokens, layer)
        if expected <= budget and (layer == bounds.min_layer
                                   or utilisation(state, costs, layer) <= max_utilisation):
            return DepthChoice(layer, expected, True, False)
    low = bounds.min_layer
    expected = waited_s + correction * expected_seconds(state, costs, tokens, low)
    alone = correction * (state.fixed_s + costs.units(tokens, low) * state.seconds_per_unit)
    return DepthChoice(low, expected, False, expected > bounds.max_latency_s and alone <= budget)
