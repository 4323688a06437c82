"""What a window run needs wherever it runs, in this process (``job``) or in a Ray actor (``ray_runner``): the
job's definition, the window embedder (one loaded model: a window's records → its output table) and the rule
for bad rows. Both runners build on this module; it imports neither."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from mipic.corpus import DEFAULT_BATCH_TOKENS, DEFAULT_WINDOW_ROWS
from mipic.corpus.inputs import BadRow, CorpusError, Record, Source, Window, read_window
from mipic.corpus.outputs import Layout, OutputFormat
from mipic.modeldir.runner import LoadedModel, Row
from mipic.modeldir.runtime import ThreadPoolChoice

OnError = Literal["raise", "skip"]
Progress = Callable[[int], None]


@dataclass(frozen=True)
class EmbedJob:
    """Everything a run depends on; what :meth:`signature` lists must match for a re-run to resume."""

    source: Source
    output: Path
    model_dir: Path
    budgets: tuple[tuple[int, int], ...]
    embedding_type: str = "float"
    window_rows: int = DEFAULT_WINDOW_ROWS
    on_error: OnError = "raise"
    overwrite: bool = False
    intra_op_threads: int = 0  # onnxruntime threads; 0 = every core
    max_batch_tokens: int = DEFAULT_BATCH_TOKENS
    thread_pool: ThreadPoolChoice = "per-session"  # "global": one pool for every stage (faster on idle cores)

    @property
    def output_format(self) -> OutputFormat:
        return "npy" if self.output.suffix.lower() == ".npy" else "parquet"

    def signature(self, model: LoadedModel) -> dict[str, Any]:
        try:
            stat = self.source.path.stat()
        except OSError as exc:
            raise CorpusError(f"cannot read {self.source.path}: {exc.strerror}") from None
        return {
            "input": str(self.source.path.resolve()), "input_bytes": stat.st_size, "input_mtime_ns": stat.st_mtime_ns,
            "format": self.source.format, "text_field": self.source.text_field, "id_field": self.source.id_field,
            "model": model.model_id, "budgets": [list(b) for b in self.budgets],
            "embedding_type": self.embedding_type, "window_rows": self.window_rows,
            "max_batch_tokens": self.max_batch_tokens, "on_error": self.on_error,
            "output_format": self.output_format,
        }


class WindowEmbedder:
    """One loaded model and the job's budgets: a window's records → its output table. Built once per
    process (or per Ray actor), so the model loads once."""

    def __init__(self, job: EmbedJob, intra_op_threads: int | None = None) -> None:
        self.job = job
        threads = job.intra_op_threads if intra_op_threads is None else intra_op_threads
        self.model = LoadedModel(job.model_dir, provider="cpu", intra_op_threads=threads,
                                 max_batch_tokens=job.max_batch_tokens, threads=job.thread_pool)
        for dim, layer in job.budgets:
            self.model.resolve_budget(dim, layer)
            self.model.check_output(dim, layer, job.embedding_type, param="--embedding-type")
        self.model.warmup()  # each session runs once before the first window, as the server does
        self.layout = Layout(job.budgets, job.embedding_type, text_ids=job.source.id_field is not None)
        self.schema = self.layout.schema({
            "model": self.model.model_id, "embedding_type": job.embedding_type,
            "budgets": {c: {"dim": d, "layer": ly} for c, (d, ly) in zip(self.layout.columns, job.budgets,
                                                                         strict=True)},
            "ids": job.source.id_field or "row number",
        })

    def tokenize(self, records: Sequence[Record]) -> list[np.ndarray]:
        return [e.ids for e in self.model.tokenizer.encode([r.text for r in records])]

    def vectors(self, ids: list[np.ndarray]) -> list[np.ndarray]:
        """Token ids → one (N, width) array of the output type per budget."""
        if not ids:
            return [np.empty((0, d), np.float32) for d, _ in self.job.budgets]
        if len(self.job.budgets) == 1:
            (dim, layer), = self.job.budgets
            floats = [np.stack(self.model.run([Row(ids=i, dim=dim, layer=layer) for i in ids]))]
        else:
            floats = self.model.run_budgets(ids, self.job.budgets)
        return [self.model.quantize(v, d, ly, self.job.embedding_type)
                for v, (d, ly) in zip(floats, self.job.budgets, strict=True)]

    def table(self, records: Sequence[Record], ids: list[np.ndarray]) -> pa.Table:
        return self.layout.table([r.id for r in records], self.vectors(ids), self.schema)

    def window(self, window: Window) -> tuple[pa.Table, list[BadRow]]:
        """Read, tokenize and embed one window (what a Ray actor does)."""
        records, bad = read_window(self.job.source, window)
        return self.table(records, self.tokenize(records)), bad

    def close(self) -> None:
        self.model.close()


def check_bad(bad: list[BadRow], on_error: OnError) -> list[str]:
    if bad and on_error == "raise":
        raise CorpusError(f"{bad[0].message} (pass --on-error skip to leave such rows out"
                          f"{f'; {len(bad)} bad rows in this window' if len(bad) > 1 else ''})")
    return [b.message for b in bad]
