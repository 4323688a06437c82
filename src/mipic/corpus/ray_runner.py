"""The same corpus job on Ray Data: the windows to run → ``map_batches`` on a pool of actors, each of which
loads the model once, reads its windows from the input itself and returns their tables → the driver commits
each window as a part, exactly as the local run does, and assembles the same output file.

Since a window is the same rows cut into the same sub-batches wherever it runs, the output equals the local
run's: same ids, same vectors, same (input) order. The input must be readable at the same path on every
node (a shared file system); ``mipic`` must be installed on every node.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any

import numpy as np
import pyarrow as pa

from mipic.corpus.embedder import EmbedJob, Progress, WindowEmbedder, check_bad
from mipic.corpus.inputs import BadRow, Window
from mipic.corpus.outputs import Parts

logger = logging.getLogger(__name__)
WINDOW_FIELDS = tuple(f.name for f in dataclasses.fields(Window))


class WindowActor:
    """A Ray Data actor: the model loads in ``__init__`` (once per actor); each call embeds whole windows."""

    def __init__(self, job: EmbedJob, threads: int) -> None:
        self.embedder = WindowEmbedder(job, intra_op_threads=threads)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        tables: list[bytes] = []
        bad_rows: list[str] = []
        for k in range(len(batch["index"])):
            window = Window(**{name: int(batch[name][k]) for name in WINDOW_FIELDS})
            table, bad = self.embedder.window(window)
            sink = pa.BufferOutputStream()
            with pa.ipc.new_stream(sink, table.schema) as writer:
                writer.write_table(table)
            tables.append(sink.getvalue().to_pybytes())
            bad_rows.append(json.dumps([dataclasses.asdict(b) for b in bad]))
        return {"index": np.asarray(batch["index"]), "rows": np.asarray(batch["rows"]),
                "table": np.array(tables, dtype=object), "bad": np.array(bad_rows, dtype=object)}


def run_on_ray(job: EmbedJob, todo: list[Window], parts: Parts, progress: Progress, address: str,
               actors: int | None, cpus_per_actor: int) -> list[str]:
    """Embed ``todo`` on Ray, committing windows as they arrive (in any order: parts are assembled by
    index); returns the messages of the rows skipped."""
    import ray
    import ray.data

    if not ray.is_initialized():
        ray.init(address=None if address == "local" else address, include_dashboard=False,
                 logging_level=logging.WARNING)
    if not todo:
        return []
    ray.data.DataContext.get_current().enable_progress_bars = False  # the job's own bar counts texts
    if actors is None:
        actors = max(1, int(ray.cluster_resources().get("CPU", 1) // cpus_per_actor))
    actors = min(actors, len(todo))
    logger.info("ray: %d windows on %d actors of %d CPUs", len(todo), actors, cpus_per_actor)
    items: list[dict[str, Any]] = [dataclasses.asdict(w) for w in todo]
    windows = ray.data.from_items(items, override_num_blocks=len(items))
    embedded = windows.map_batches(
        WindowActor, fn_constructor_kwargs={"job": job, "threads": cpus_per_actor}, batch_size=1,
        concurrency=actors, num_cpus=cpus_per_actor, batch_format="numpy",
    )
    skipped: list[str] = []
    for row in embedded.iter_rows():
        bad = [BadRow(**b) for b in json.loads(row["bad"])]
        skipped += check_bad(bad, job.on_error)
        table = pa.ipc.open_stream(pa.py_buffer(row["table"])).read_all()
        parts.write(int(row["index"]), table, [b.message for b in bad])
        progress(int(row["rows"]))
    return skipped
