"""A loaded model version: manifest + tokenizer + staged runtime + exit heads, and the early-exit runner.

The one owner of turning token ids into served vectors: the server's batcher, the evaluation grid and
the head fitter all call it, and every vector leaves through ``vector.embed``.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import ThreadpoolController

from mipic.modeldir.errors import InvalidBudget, InvalidRequest
from mipic.modeldir.heads import ExitHeads, load_heads
from mipic.modeldir.manifest import GOLDEN_FILE, Manifest, ManifestError, budget_key, load_manifest
from mipic.modeldir.runtime import ArenaChoice, ProviderChoice, StagedRuntime, ThreadPoolChoice
from mipic.modeldir.tokenizer import TextTokenizer
from mipic.modeldir.vector import (
    CALIBRATED_TYPES,
    OUTPUT_TYPES,
    PACKED_TYPES,
    embed,
    pool,
    quantize,
    truncate_normalize,
)

logger = logging.getLogger(__name__)


@functools.cache
def _blas_controller() -> ThreadpoolController:
    return ThreadpoolController()


_BLAS_PINNED = False


def pin_single_thread_blas() -> None:
    """Set NumPy's BLAS to one thread for the rest of this process, so that :meth:`LoadedModel.embed_pooled`
    no longer limits it around every head (threadpoolctl's limit costs ~0.2–0.6 ms a call: as much as a
    small layer-1 batch). For processes whose only BLAS work is the heads: the server calls it at start."""
    global _BLAS_PINNED
    _blas_controller().limit(limits=1, user_api="blas")  # not restored: the limit stays for the process
    _BLAS_PINNED = True


def _single_thread_blas() -> Any:
    if _BLAS_PINNED:
        return contextlib.nullcontext()
    return _blas_controller().limit(limits=1, user_api="blas")

# A sub-batch is cut when its longest row is this many times longer than its shortest:
# padding a 16-token row to 256 would cost 16x its compute.
MAX_LENGTH_RATIO = 2.0
MIN_SUB_BATCH = 8
# What one sub-batch may hold, padded. Tokens bound the linear parts (B·T·H activations); token pairs
# (B·T², per attention head) bound attention's scores and softmax, which dominate memory at long inputs:
# MiniLM at 64 x 256 tokens peaks ~0.9 GB above idle, at 32 x 256 ~0.45 GB. 32 x 256 is also faster than
# 64 x 256 per text (bench/results/engine.md). The server's settings pass the same values to the batcher.
DEFAULT_MAX_BATCH_TOKENS = 16384
DEFAULT_MAX_BATCH_TOKEN_PAIRS = 32 * 256 * 256
# The shared arena hands memory back after a sub-batch only when the sub-batch was large: below this many
# padded tokens (and a quarter of the token-pair budget) it keeps what it holds for the next one, so the
# common small batches do not pay page faults every time (measured: bench/results/arena_keep.md). What it
# keeps is bounded by what a sub-batch of this size needs (estimated ~60 MB for MiniLM at ~16-256 tokens).
DEFAULT_ARENA_KEEP_TOKENS = 4096
# What a large sub-batch grew the shared arena by is handed back once the engine has been idle this long after
# it (seconds), not at the end of the call: a caller that comes back sooner (an in-process loop over batches of
# long texts, a server under steady load between two queue-empty moments) reuses the grown arena instead of
# regrowing it page fault by page fault (measured: bench/results/arena_keep.md), and an idle engine is back to
# the keep threshold's worth this long after its last call. 0 = at the end of the call, as before.
DEFAULT_ARENA_IDLE_RELEASE_S = 1.0


@dataclass(frozen=True)
class Row:
    """One input ready to run: token ids and the budget it asked for."""

    ids: np.ndarray  # (T,) int64
    dim: int
    layer: int


class LoadedModel:
    """Everything needed to turn token ids into Matryoshka embeddings for one model version."""

    def __init__(
        self,
        model_dir: Path,
        provider: ProviderChoice = "auto",
        intra_op_threads: int = 0,
        inter_op_threads: int = 1,
        max_seq_length: int | None = None,
        truncate: bool = True,
        verify_checksums: bool = True,
        arena: ArenaChoice = "shared",
        max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
        max_batch_token_pairs: int = DEFAULT_MAX_BATCH_TOKEN_PAIRS,
        arena_keep_tokens: int = DEFAULT_ARENA_KEEP_TOKENS,
        threads: ThreadPoolChoice = "per-session",
        arena_idle_release_s: float = DEFAULT_ARENA_IDLE_RELEASE_S,
    ) -> None:
        if max_batch_tokens < 1 or max_batch_token_pairs < 1:
            raise ValueError(
                f"max_batch_tokens and max_batch_token_pairs must be positive, got {max_batch_tokens} and "
                f"{max_batch_token_pairs}"
            )
        if not arena_idle_release_s >= 0:
            raise ValueError(f"arena_idle_release_s must be >= 0, got {arena_idle_release_s}")
        self.model_dir = Path(model_dir)
        self.manifest: Manifest = load_manifest(self.model_dir, verify=verify_checksums)
        m = self.manifest
        self.heads: ExitHeads | None = (
            load_heads(self.model_dir / m.heads.path, m.num_layers, m.hidden_size) if m.heads else None
        )
        max_len = min(max_seq_length or self.manifest.max_seq_length, self.manifest.max_seq_length)
        self.tokenizer = TextTokenizer(self.model_dir / self.manifest.tokenizer, max_len, truncate)
        self.runtime = StagedRuntime(
            self.model_dir, self.manifest, provider, intra_op_threads, inter_op_threads, arena, threads
        )
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_token_pairs = max_batch_token_pairs
        self.arena_keep_tokens = max(0, arena_keep_tokens)
        self._arena_grown = False  # a large sub-batch's growth is still held for the next one (see run)
        self.arena_idle_release_s = arena_idle_release_s
        self._shared_arena = arena == "shared"
        self._closed = False
        # One call (or one idle release) at a time; calls nest (run_budgets → pool_all_layers), so reentrant.
        self._lock = threading.RLock()
        self._depth = 0  # calls in progress on this thread's stack
        self._calls = 0  # outermost calls begun: an idle release armed before a later call does nothing
        self._idle_timer: threading.Timer | None = None
        self._dims = frozenset(self.manifest.dims)
        cal = self.manifest.calibration
        self._ranges: dict[str, tuple[float, float]] = (
            {k: (r.low, r.high) for k, r in cal.ranges.items()} if cal is not None else {}
        )

    @property
    def model_id(self) -> str:
        return self.manifest.model_id

    @property
    def version(self) -> str:
        return self.manifest.version

    def resolve_budget(self, dim: int | None, layer: int | None) -> tuple[int, int]:
        """Defaults to the full width and depth; rejects anything outside the manifest."""
        m = self.manifest
        d = m.hidden_size if dim is None else dim
        ly = m.num_layers if layer is None else layer
        if d not in self._dims:
            raise InvalidBudget(f"dim={d} is not served by {m.model_id}; allowed: {m.dims}", field="dim")
        if not 1 <= ly <= m.num_layers:
            raise InvalidBudget(f"layer={ly} must be between 1 and {m.num_layers}", field="layer")
        return d, ly

    def check_output(self, dim: int, layer: int, output: str, param: str = "output") -> None:
        """Refuse an output type this (dim, layer) cannot give: unknown, bits of a dim not a multiple of 8,
        or int8/uint8 on a model exported without calibration ranges. ``param``: what the error calls the
        output type, by default its key ``output`` (the HTTP layer renames it per surface); a CLI names its flag."""
        if output not in OUTPUT_TYPES:
            raise InvalidRequest(f"{param}: unknown output type {output!r}; expected one of {list(OUTPUT_TYPES)}",
                                 field=param)
        if output in PACKED_TYPES and dim % 8:
            raise InvalidRequest(
                f"{param}={output} packs 8 values per byte, so dim must be a multiple of 8; got {dim}", field=param
            )
        if output in CALIBRATED_TYPES and budget_key(dim, layer) not in self._ranges:
            raise InvalidRequest(
                f"{param}={output} needs calibration ranges, and {self.model_id} was exported without them "
                "(re-export it, or run `mipic calibrate` on its directory)",
                field=param,
            )

    def quantize(self, vectors: np.ndarray, dim: int, layer: int, output: str) -> np.ndarray:
        """(N, dim) served unit vectors of one budget → ``output`` with this model's fixed ranges for it."""
        low, high = self._ranges.get(budget_key(dim, layer), (None, None))
        return quantize(vectors, output, low, high)

    # ------------------------------------------------------------------ hot path (worker thread)

    def run(self, rows: list[Row], more: bool = False) -> list[np.ndarray]:
        """Embed rows of mixed budgets; returns one unit vector per row, in order.

        Rows are sorted by length and cut into sub-batches of similar length (less padding), each within
        ``max_batch_tokens`` padded tokens and ``max_batch_token_pairs`` padded token pairs (memory). In
        each sub-batch, stages run in order and rows leave at their exit layer, so a row at layer k costs
        k layers, whatever the other rows asked for.

        Memory: what a large sub-batch grows the shared arena by is kept for the sub-batches after it and handed
        back once the engine has been idle for ``arena_idle_release_s`` after the call (by a timer; 0: at the
        call's last stage). With ``more`` (the caller runs another batch right after this one: a busy server's
        queue) and a zero idle time, it is handed back at the end of the first later call without it. So
        back-to-back large batches do not pay the page faults of regrowing it every time, and an idle engine
        holds no more than the keep threshold's worth.
        """
        out: list[np.ndarray] = [np.empty(0, np.float32)] * len(rows)
        with self._call():
            chunks = self.sub_batches([r.ids.shape[0] for r in rows])
            for j, chunk in enumerate(chunks):
                final = j == len(chunks) - 1 and not more
                for i, vec in zip(chunk, self._run_chunk([rows[i] for i in chunk], final), strict=True):
                    out[i] = vec
        return out

    @contextlib.contextmanager
    def _call(self) -> Iterator[None]:
        """Around every public call that runs the sessions: one at a time, a pending idle release cancelled
        at the start and, if a large sub-batch's growth is still held at the end, armed again."""
        with self._lock:
            outermost = self._depth == 0
            if outermost:
                self._calls += 1
                if self._idle_timer is not None:
                    self._idle_timer.cancel()
                    self._idle_timer = None
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if (outermost and self._arena_grown and self.arena_idle_release_s > 0
                        and self._shared_arena and not self._closed):  # other arenas have nothing to hand back
                    self._idle_timer = threading.Timer(self.arena_idle_release_s, self._idle_release,
                                                       args=(self._calls,))
                    self._idle_timer.daemon = True
                    self._idle_timer.start()

    def _idle_release(self, calls: int) -> None:
        """The idle timer: hand the held growth back unless a call began since it was armed."""
        with self._lock:
            if calls != self._calls or not self._arena_grown or self._closed:
                return
            self._idle_timer = None
            try:
                self.runtime.release_arena()
            except Exception:  # a closed or failing runtime: the memory is the process's problem, not a crash
                logger.warning("could not hand the arena back after the idle time", exc_info=True)
            self._arena_grown = False

    def run_budgets(self, ids: list[np.ndarray], budgets: Sequence[tuple[int, int]]) -> list[np.ndarray]:
        """Every input at several (dim, layer) budgets in one pass → one (N, dim) array per budget.

        Layers up to the deepest budget run once per sub-batch and are pooled at each budget's layer, so
        ``[(64, 3), (384, 6)]`` costs six layers, not nine. Sub-batches are cut as :meth:`run` cuts them.
        """
        layers = sorted({layer for _, layer in budgets})
        out = [np.empty((len(ids), dim), dtype=np.float32) for dim, _ in budgets]
        with self._call():
            for chunk in self.sub_batches([i.shape[0] for i in ids]):
                pooled = self.pool_all_layers([ids[i] for i in chunk], layers)  # (len(layers), B, H)
                for b, (dim, layer) in enumerate(budgets):
                    out[b][chunk] = self.embed_pooled(pooled[layers.index(layer)], layer, dim)
        return out

    def sub_batches(self, lengths: Sequence[int]) -> list[list[int]]:
        """Indices of rows cut as :meth:`run` runs them: longest first, similar lengths together, each
        sub-batch within the padded token and token-pair limits."""
        order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
        cuts: list[list[int]] = []
        start = 0
        while start < len(order):
            end = start + 1
            longest = lengths[order[start]]  # sorted: the first row sets the padded width
            while end < len(order) and self.fits(end + 1 - start, longest) and (
                end - start < MIN_SUB_BATCH or longest <= MAX_LENGTH_RATIO * lengths[order[end]]
            ):
                end += 1
            cuts.append(order[start:end])
            start = end
        return cuts

    def fits(self, rows: int, longest: int) -> bool:
        """Whether ``rows`` rows padded to ``longest`` tokens stay within the sub-batch limits."""
        return rows * longest <= self.max_batch_tokens and rows * longest * longest <= self.max_batch_token_pairs

    def _large(self, rows: int, width: int) -> bool:
        """Whether a sub-batch of ``rows`` × ``width`` padded tokens grows the shared arena by more than it may
        keep while idle: above the keep threshold (tokens, or a quarter of the token-pair budget)."""
        return (rows * width > self.arena_keep_tokens
                or rows * width * width > self.max_batch_token_pairs // 4)

    def _hands_back(self, rows: int, width: int, final: bool) -> bool:
        """Whether a sub-batch of ``rows`` × ``width`` padded tokens hands the shared arena's growth back at its
        last stage: when nothing runs right after it (``final``), no idle timer does it instead, and it, or an
        earlier sub-batch whose growth was kept, was large. Records a large sub-batch's growth as held otherwise."""
        large = self._large(rows, width)
        release = final and self.arena_idle_release_s == 0 and (large or self._arena_grown)
        self._arena_grown = (self._arena_grown or large) and not release
        return release

    def _run_chunk(self, rows: list[Row], final: bool = True) -> list[np.ndarray]:
        """One sub-batch. ``final``: nothing runs right after it (see :meth:`_hands_back`)."""
        n = len(rows)
        lengths = np.array([r.ids.shape[0] for r in rows])
        exits = np.array([r.layer for r in rows])
        width = int(lengths.max())
        release = self._hands_back(n, width, final)
        ids = np.zeros((n, width), dtype=np.int64)  # (B, T); pad id 0 is masked out
        mask = np.zeros((n, width), dtype=np.int64)
        for i, r in enumerate(rows):
            ids[i, : lengths[i]] = r.ids
            mask[i, : lengths[i]] = 1
        pooled = np.empty((n, self.manifest.hidden_size), dtype=np.float32)
        alive = np.arange(n)  # rows still in the batch, as indices into `rows`
        states = self.runtime.embed(ids)  # (B, T, H)
        deepest = int(exits.max())
        for layer in range(1, deepest + 1):
            states = self.runtime.layer(layer, states, mask, last=layer == deepest and release)
            # fp32 sums whatever the graphs' precision (an fp16 mean over 256 tokens loses ~3 digits)
            if layer == deepest:  # every row still here leaves: pool the batch as it is, no gather
                pooled[alive] = pool(states.astype(np.float32, copy=False), mask, self.manifest.pooling)
                break
            leaving = exits[alive] == layer
            if leaving.any():
                pooled[alive[leaving]] = pool(states[leaving].astype(np.float32, copy=False), mask[leaving],
                                              self.manifest.pooling)
                stay = ~leaving
                alive, states, mask = alive[stay], states[stay], mask[stay]
                if alive.size:
                    # Right padding only: columns past the longest remaining row are pure padding.
                    keep = int(lengths[alive].max())
                    states, mask = states[:, :keep], mask[:, :keep]
        first = rows[0]
        if all(r.layer == first.layer and r.dim == first.dim for r in rows):  # one budget: one head call
            return list(self.embed_pooled(pooled, first.layer, first.dim))
        out: list[np.ndarray] = [np.empty(0, np.float32)] * n
        groups: dict[tuple[int, int], list[int]] = {}
        for i, r in enumerate(rows):
            groups.setdefault((r.layer, r.dim), []).append(i)
        for (layer, dim), idx in groups.items():
            vectors = self.embed_pooled(pooled[idx], layer, dim)
            for j, i in enumerate(idx):
                out[i] = vectors[j]
        return out

    def embed_pooled(self, pooled: np.ndarray, layer: int, dim: int, heads: bool = True) -> np.ndarray:
        """(N, H) pooled states of exit layer ``layer`` → (N, dim) served unit vectors (through this
        model's head for that layer unless ``heads`` is false)."""
        if not heads or self.heads is None:
            return np.asarray(embed(pooled, dim), dtype=np.float32)
        # One BLAS thread for the head's matmul: OpenBLAS's threads spin after a call and starve the
        # next stage's onnxruntime threads (measured at layer 1, ~16 tokens: heads cost 10-31% of
        # throughput with the BLAS pool, 1-5% without; bench/heads_cost.py).
        with _single_thread_blas():
            return np.asarray(embed(pooled, dim, self.heads.layer(layer)), dtype=np.float32)

    def pool_all_layers(self, ids: list[np.ndarray], layers: Sequence[int] | None = None) -> np.ndarray:
        """(L, N, H) pooled, unnormalised vectors at every layer (or only at ``layers``, ascending, running
        no deeper than the last of them) in one pass."""
        wanted = list(self.manifest.layers if layers is None else layers)
        deepest = max(wanted)
        n = len(ids)
        lengths = np.array([i.shape[0] for i in ids])
        tokens = np.zeros((n, int(lengths.max())), dtype=np.int64)  # (B, T)
        mask = np.zeros_like(tokens)
        for r, row in enumerate(ids):
            tokens[r, : lengths[r]] = row
            mask[r, : lengths[r]] = 1
        out = np.empty((len(wanted), n, self.manifest.hidden_size), dtype=np.float32)
        with self._call():
            states = self.runtime.embed(tokens)
            release = self._hands_back(n, int(lengths.max()), final=True)
            for layer in range(1, deepest + 1):
                states = self.runtime.layer(layer, states, mask, last=layer == deepest and release)
                if layer in wanted:
                    out[wanted.index(layer)] = pool(states.astype(np.float32, copy=False), mask,
                                                    self.manifest.pooling)
        return out

    def verify_golden(self) -> float:
        """Check this version against the PyTorch vectors stored at export (``golden.json``), at every
        (layer, dim), in one mixed-budget batch. Returns the worst cosine; raises :class:`ManifestError`
        below the manifest's ``golden_min_cosine``.

        ``golden.json`` = {texts, pooled: {layer: (N, H)}, vectors?: {layer: (N, H)}}: ``vectors`` are the
        reference outputs of the exit heads (present when the model has heads), so altered heads fail.
        """
        path = self.model_dir / GOLDEN_FILE
        if not path.is_file():
            raise ManifestError(f"{self.model_dir}: no {GOLDEN_FILE} to verify against")
        try:
            golden = json.loads(path.read_text())
            texts = list(golden["texts"])
            reference = golden["vectors"] if self.heads is not None else golden["pooled"]
        except (ValueError, KeyError, TypeError) as exc:
            what = "no head vectors" if isinstance(exc, KeyError) else "unreadable"
            raise ManifestError(f"{GOLDEN_FILE}: {what} ({type(exc).__name__})") from exc
        ids = [e.ids for e in self.tokenizer.encode(texts)]
        budgets = [(d, ly) for ly in self.manifest.layers for d in self.manifest.dims]
        got = self.run([Row(ids=i, dim=d, layer=ly) for d, ly in budgets for i in ids])
        worst = 1.0
        for b, (d, ly) in enumerate(budgets):
            ref = truncate_normalize(np.asarray(reference[str(ly)], dtype=np.float32), d)
            for t in range(len(ids)):
                cos = float(got[b * len(ids) + t] @ ref[t])
                worst = min(worst, cos) if np.isfinite(cos) else -1.0
        if worst < self.manifest.golden_min_cosine:
            raise ManifestError(f"{self.model_id} fails its golden check (worst cosine {worst:.5f})")
        return worst

    def warmup(self) -> None:
        """One batch that exits at every layer, so each session has run once before traffic."""
        ids = self.tokenizer.encode(["warm up"])[0].ids
        self.run([Row(ids=ids, dim=self.manifest.hidden_size, layer=k) for k in self.manifest.layers])

    def close(self) -> None:
        """Drop the sessions and any pending idle release. Does not wait for a call in progress (a server
        stopping at its drain deadline closes the model while the last batch still runs on the worker thread)."""
        self._closed = True
        timer = self._idle_timer
        if timer is not None:
            timer.cancel()
        self.runtime.close()
