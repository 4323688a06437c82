"""``mipic embed``: a corpus at one or several budgets, in process (no HTTP), resumable. The job lives in
:mod:`mipic.corpus.job` (pyarrow), imported when the command runs."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from mipic.cli.base import UserError, one_line, servable, start
from mipic.corpus import DEFAULT_BATCH_TOKENS, DEFAULT_WINDOW_ROWS
from mipic.corpus.inputs import CorpusError, Source, detect_format
from mipic.modeldir.errors import EngineError
from mipic.service.settings import DEFAULT_MODEL_DIR


class EmbeddingType(str, Enum):
    float = "float"
    int8 = "int8"
    uint8 = "uint8"
    binary = "binary"
    ubinary = "ubinary"


class OnErrorChoice(str, Enum):
    raise_ = "raise"
    skip = "skip"


class ThreadPool(str, Enum):
    per_session = "per-session"
    global_ = "global"


def embed(
    input_path: Annotated[Path, typer.Argument(metavar="INPUT", help="JSONL, CSV or Parquet, one text a row.")],
    output: Annotated[Path, typer.Argument(help="Parquet (id + one vector column per budget), or .npy (one budget; "
                                           "ids beside it in OUTPUT-stem.ids.jsonl).")],
    model: Annotated[Path, typer.Option(help="Model directory, or a repository (its CURRENT version).")] = (
        DEFAULT_MODEL_DIR),
    dim: Annotated[int | None, typer.Option(help="Matryoshka dim: smaller makes the index smaller (default: full).")
                   ] = None,
    layer: Annotated[int | None, typer.Option(help="Exit layer: fewer layers embed faster (default: the last).")
                     ] = None,
    budget: Annotated[list[str] | None, typer.Option(
        help="DIM:LAYER, repeatable instead of --dim/--layer: several budgets in one pass, shared layers run once "
             "(--budget 64:3 --budget 384:6 runs layers 1-3 once).")] = None,
    embedding_type: Annotated[EmbeddingType, typer.Option(
        help="float, int8/uint8 (calibrated ranges, 4x smaller), binary/ubinary (1 bit a value, 32x smaller).")
    ] = EmbeddingType.float,
    text_field: Annotated[str, typer.Option(help="The field (JSONL) or column (CSV, Parquet) holding the text.")
                          ] = "text",
    id_field: Annotated[str | None, typer.Option(
        help="A field holding each row's id, written as text (default: the 0-based row number).")] = None,
    input_format: Annotated[str | None, typer.Option(help="jsonl, csv or parquet (default: from the suffix).")
                            ] = None,
    on_error: Annotated[OnErrorChoice, typer.Option(
        help="raise: stop at the first bad row, naming it; skip: leave bad rows out and count them.")
    ] = OnErrorChoice.raise_,
    window: Annotated[int, typer.Option(min=1, help="Rows read, sorted by length and run together; also the unit "
                                        "of resume. Larger groups lengths better, costs more memory.")
                      ] = DEFAULT_WINDOW_ROWS,
    overwrite: Annotated[bool, typer.Option(help="Replace OUTPUT and discard an unfinished run's parts.")] = False,
    threads: Annotated[int, typer.Option(min=0, help="onnxruntime threads (0 = every core).")] = 0,
    max_batch_tokens: Annotated[int, typer.Option(min=1, help="Padded tokens per sub-batch: the fastest on 2 "
                                                  "cores; raise it on machines with larger caches.")
                                ] = DEFAULT_BATCH_TOKENS,
    thread_pool: Annotated[ThreadPool, typer.Option(
        help="per-session: one onnxruntime pool per stage (safe on shared cores); global: one pool for every "
             "stage, ~1.1x faster on cores the job has alone, ~0.8x when other processes compete "
             "(bench/results/thread_pool.md).")] = ThreadPool.per_session,
    progress: Annotated[bool, typer.Option(help="Progress bar with texts/s and ETA on stderr.")] = True,
    ray: Annotated[str | None, typer.Option(
        help="Run on Ray Data: 'local' starts Ray here, 'auto' or ray://HOST:10001 joins a cluster.")] = None,
    ray_actors: Annotated[int | None, typer.Option(min=1, help="Ray actors, each loading the model once "
                                                   "(default: the cluster's CPUs / --ray-cpus-per-actor).")] = None,
    ray_cpus_per_actor: Annotated[int, typer.Option(min=1, help="CPUs (onnxruntime threads) per Ray actor.")] = 1,
) -> None:
    """Embed a corpus at a budget, in process (no HTTP), resumable: a re-run of an interrupted job continues,
    and its output equals an uninterrupted run's."""
    from mipic.corpus.embedder import EmbedJob
    from mipic.corpus.job import embed_corpus, parse_budget, resolve_budgets

    # ``--budget 64:3`` (repeatable) or ``--dim/--layer``, not both; nothing given = the full model.
    if budget and (dim is not None or layer is not None):
        raise typer.BadParameter("give --budget, or --dim/--layer, not both", param_hint="--budget")
    try:
        budgets: list[tuple[int | None, int | None]] = [parse_budget(b) for b in budget] if budget else [(dim, layer)]
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--budget") from None
    start("warning")
    version_dir = servable(model, bootstrap=True)
    try:
        source = Source(input_path, detect_format(input_path, input_format), text_field, id_field)
        resolved = resolve_budgets(version_dir, budgets)
        job = EmbedJob(source, output, version_dir, resolved, embedding_type.value, window, on_error.value,
                       overwrite, threads, max_batch_tokens, thread_pool.value)
        result = embed_corpus(job, progress=progress, ray_address=ray, ray_actors=ray_actors,
                              ray_cpus_per_actor=ray_cpus_per_actor)
    except (CorpusError, EngineError) as exc:
        raise UserError(one_line(exc)) from None
    for line in result.skipped_examples:
        typer.echo(f"skipped: {line}", err=True)
    skipped = f", skipped {result.skipped} bad rows" if result.skipped else ""
    resumed = f", {result.resumed_windows} of {result.windows} windows from an earlier run" if (
        result.resumed_windows) else ""
    typer.echo(f"embedded {result.rows} texts at {', '.join(f'{d}:{ly}' for d, ly in resolved)} into {output} in "
               f"{result.seconds:.1f} s ({result.texts_per_s:.0f} texts/s{skipped}{resumed})")
