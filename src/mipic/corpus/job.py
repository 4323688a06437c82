"""``mipic embed``: a corpus at one or several budgets, in process through the staged runner (no HTTP).

The input is cut into windows of rows (``inputs.plan_windows``). A window is read and tokenized on a
helper thread while the previous one runs, then goes to ``LoadedModel.run`` (one budget) or
``LoadedModel.run_budgets`` (several: shared layers run once), which sorts the window by length and cuts it
into sub-batches by padded tokens, as the server's runner does; each finished window is committed as a part
(``outputs.Parts``). Memory stays bounded by two windows in flight, whatever the corpus size.

Rows come out in input order (rows that ``--on-error skip`` leaves out are missing, and counted); the id is
the ``--id-field`` value as text, or the 0-based row number.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from mipic.corpus.embedder import EmbedJob, OnError, Progress, WindowEmbedder, check_bad
from mipic.corpus.inputs import BadRow, CorpusError, Record, Window, plan_windows, read_window
from mipic.corpus.outputs import Parts
from mipic.corpus.ray_runner import run_on_ray
from mipic.modeldir.manifest import load_manifest

logger = logging.getLogger(__name__)


def parse_budget(text: str) -> tuple[int, int]:
    """``"64:3"`` → (64, 3); anything else is a ``ValueError`` that quotes it."""
    dim, sep, layer = text.partition(":")
    if not sep or not dim.strip().isdigit() or not layer.strip().isdigit():
        raise ValueError(f"{text!r} is not DIM:LAYER (e.g. 64:3)")
    return int(dim), int(layer)


def resolve_budgets(model_dir: Path, budgets: Sequence[tuple[int | None, int | None]]) -> tuple[tuple[int, int], ...]:
    """Defaults filled in from the manifest (full width, last layer); the runner checks the rest."""
    manifest = load_manifest(model_dir, verify=False)
    out = tuple((manifest.hidden_size if d is None else d, manifest.num_layers if ly is None else ly)
                for d, ly in budgets)
    if len(set(out)) < len(out):
        raise CorpusError(f"a budget is given twice: {', '.join(f'{d}:{ly}' for d, ly in out)}")
    return out


@dataclass
class EmbedResult:
    output: Path
    rows: int  # written
    skipped: int
    windows: int
    resumed_windows: int  # finished by an earlier, interrupted run
    seconds: float  # this run, from the first window to the renamed output (model load excluded)
    skipped_examples: list[str] = field(default_factory=list)

    @property
    def texts_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else float("nan")


def embed_corpus(job: EmbedJob, progress: bool = True, ray_address: str | None = None,
                 ray_actors: int | None = None, ray_cpus_per_actor: int = 1) -> EmbedResult:
    """Run (or resume) ``job``; locally, or on Ray when ``ray_address`` is given ("local" starts a Ray
    instance here; an address joins a cluster; an already initialised Ray is used as it is)."""
    embedder = WindowEmbedder(job)
    try:
        t0 = time.perf_counter()
        windows = plan_windows(job.source, job.window_rows)
        if job.output_format == "npy" and len(job.budgets) != 1:
            raise CorpusError("a .npy output holds one budget; write Parquet for several")
        parts = Parts(job.output)
        done = parts.open(job.signature(embedder.model), len(windows), job.overwrite)
        todo = [w for w in windows if w.index not in done]
        skipped = [m for d in done.values() for m in d.get("skipped_rows", [])]
        n_skipped = sum(int(d.get("skipped", 0)) for d in done.values())
        total = sum(w.rows for w in windows)
        logger.info("embedding %d rows of %s in %d windows (%d done before) at %s", total, job.source.path,
                    len(windows), len(done), ", ".join(f"{d}:{ly}" for d, ly in job.budgets))
        bar = _bar(total, total - sum(w.rows for w in todo), progress)
        try:
            if ray_address is None:
                run = _run_local(embedder, todo, parts, job.on_error, bar.update)
            else:
                run = run_on_ray(job, todo, parts, bar.update, ray_address, ray_actors, ray_cpus_per_actor)
        finally:
            bar.close()
        skipped += run
        n_skipped += len(run)
        rows = parts.finish(job.output_format, embedder.schema)
        seconds = time.perf_counter() - t0
    finally:
        embedder.close()
    return EmbedResult(job.output, rows, n_skipped, len(windows), len(done), seconds, skipped[:10])


def _bar(total: int, initial: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="text", unit_scale=True, smoothing=0.1, disable=not enabled,
                desc="embed", dynamic_ncols=True)


def _run_local(embedder: WindowEmbedder, todo: list[Window], parts: Parts, on_error: OnError,
               progress: Progress) -> list[str]:
    """Windows in order. While one runs, the next is read and tokenized on one helper thread and the last
    one's part is written on another (Arrow and the tokenizer release the GIL), so the runner rarely waits."""
    source = embedder.job.source

    def load(w: Window) -> tuple[list[Record], list[BadRow], list[np.ndarray]]:
        records, bad = read_window(source, w)
        return records, bad, embedder.tokenize(records)

    def commit(w: Window, table: pa.Table, bad: list[str]) -> None:
        parts.write(w.index, table, bad)
        progress(w.rows)

    skipped: list[str] = []
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="corpus-read") as reader, \
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="corpus-write") as writer:
        queue = iter(todo)
        first = next(queue, None)
        loading = None if first is None else (first, reader.submit(load, first))
        written: Future[None] | None = None
        while loading is not None:
            w, fut = loading
            records, bad, ids = fut.result()
            nxt = next(queue, None)
            loading = None if nxt is None else (nxt, reader.submit(load, nxt))
            skipped += check_bad(bad, on_error)
            table = embedder.table(records, ids)
            if written is not None:
                written.result()  # one part in flight at most; a failed write stops the job here
            written = writer.submit(commit, w, table, [b.message for b in bad])
        if written is not None:
            written.result()
    return skipped
