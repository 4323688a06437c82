"""Corpus outputs: one Parquet part per window beside the output, a manifest that says how far the job got,
and the final Parquet or ``.npy`` file assembled from the parts in window order and renamed into place.

``OUTPUT`` never exists half-written: until the job finishes, everything lives in ``OUTPUT.parts/``, whose
``manifest.json`` says ``"status": "incomplete"``, which windows are done and which rows were skipped. A
re-run of the same job skips the finished windows; since a window is always the same rows cut the same way,
the assembled file is the same, byte for byte, as an uninterrupted run's.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mipic.corpus.inputs import CorpusError
from mipic.modeldir.manifest import budget_key
from mipic.modeldir.vector import PACKED_TYPES

OutputFormat = Literal["parquet", "npy"]
MANIFEST = "manifest.json"
ID_COLUMN = "id"
MAX_SKIPPED_LISTED = 100  # rows named in the manifest when --on-error skip leaves rows out
# Vectors neither repeat (no dictionary) nor get filtered by value (no statistics); both cost more than the
# runner's first layer on short texts. The id column keeps its statistics (row-group pruning by id).
PARQUET_OPTIONS: dict[str, Any] = {"use_dictionary": False, "write_statistics": [ID_COLUMN]}


@dataclass(frozen=True)
class Layout:
    """The output's columns: ``id`` and one vector column per budget, as fixed-size lists of the output type."""

    budgets: tuple[tuple[int, int], ...]
    embedding_type: str
    text_ids: bool  # ids from --id-field are text; without it they are row numbers (int64)

    @property
    def columns(self) -> list[str]:
        if len(self.budgets) == 1:
            return ["embedding"]
        return [f"embedding_{budget_key(d, ly)}" for d, ly in self.budgets]

    @property
    def value_dtype(self) -> np.dtype[Any]:
        """What ``LoadedModel.quantize`` returns for this type (float32, int8 or uint8)."""
        return np.dtype({"float": np.float32, "int8": np.int8, "binary": np.int8}.get(self.embedding_type, np.uint8))

    @property
    def value_type(self) -> pa.DataType:
        return pa.from_numpy_dtype(self.value_dtype)

    def width(self, dim: int) -> int:
        return dim // 8 if self.embedding_type in PACKED_TYPES else dim

    def schema(self, metadata: dict[str, Any]) -> pa.Schema:
        fields = [pa.field(ID_COLUMN, pa.string() if self.text_ids else pa.int64(), nullable=False)]
        fields += [pa.field(name, pa.list_(self.value_type, self.width(d)), nullable=False)
                   for name, (d, _) in zip(self.columns, self.budgets, strict=True)]
        return pa.schema(fields, metadata={"mipic": json.dumps(metadata, sort_keys=True)})

    def table(self, ids: Sequence[str | int], vectors: Sequence[np.ndarray], schema: pa.Schema) -> pa.Table:
        """One window's rows: ids and, per budget, an (N, width) array of the output type."""
        # row numbers through NumPy: pa.array on a list of 4096 Python ints costs ~50 ms, as much as a layer
        arrays: list[pa.Array] = [pa.array(ids, type=pa.string()) if self.text_ids
                                  else pa.array(np.asarray(ids, dtype=np.int64))]
        for (d, _), v in zip(self.budgets, vectors, strict=True):
            flat = pa.array(np.ascontiguousarray(v, dtype=self.value_dtype).reshape(-1))
            arrays.append(pa.FixedSizeListArray.from_arrays(flat, self.width(d)))
        return pa.Table.from_arrays(arrays, schema=schema)


class Parts:
    """``OUTPUT.parts/``: ``manifest.json`` and ``w000000.parquet`` per finished window."""

    def __init__(self, output: Path) -> None:
        self.output = output
        self.dir = output.with_name(output.name + ".parts")
        self.manifest_path = self.dir / MANIFEST
        self.state: dict[str, Any] = {}

    def open(self, job: dict[str, Any], windows: int, overwrite: bool) -> dict[int, dict[str, Any]]:
        """Start, or resume the same job; returns the windows already done (index → rows, skipped)."""
        if overwrite:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.output.unlink(missing_ok=True)
            if self.output.suffix.lower() == ".npy":
                npy_ids_path(self.output).unlink(missing_ok=True)
        if self.output.exists():
            raise CorpusError(f"{self.output} exists; pass --overwrite to replace it")
        if self.manifest_path.is_file():
            state = json.loads(self.manifest_path.read_text())
            old = state.get("job", {})
            changed = sorted(k for k in set(old) | set(job) if old.get(k) != job.get(k))
            if changed:
                raise CorpusError(f"{self.dir} holds an unfinished run of a different job ({', '.join(changed)} "
                                  "differ); pass --overwrite to start over")
            self.state = state
        else:
            self.dir.mkdir(parents=True, exist_ok=True)
            self.state = {"status": "incomplete", "job": job, "windows": windows, "done": {}}
            self._save()
        return {int(k): v for k, v in self.state["done"].items()}

    def path(self, index: int) -> Path:
        return self.dir / f"w{index:06d}.parquet"

    def write(self, index: int, table: pa.Table, skipped: list[str]) -> None:
        """Commit one window: its part file (written aside, then renamed), then the manifest."""
        tmp = self.path(index).with_suffix(".tmp")
        pq.write_table(table, tmp, **PARQUET_OPTIONS)
        tmp.replace(self.path(index))
        self.state["done"][str(index)] = {"rows": table.num_rows, "skipped": len(skipped),
                                          "skipped_rows": skipped[:MAX_SKIPPED_LISTED]}
        self._save()

    def _save(self) -> None:
        tmp = self.manifest_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state, indent=1))
        tmp.replace(self.manifest_path)

    def finish(self, output_format: OutputFormat, schema: pa.Schema) -> int:
        """Assemble the parts in window order into ``OUTPUT`` (written aside, renamed), drop the parts;
        returns the rows written."""
        indices = range(int(self.state["windows"]))
        tmp = self.output.with_name(f".{self.output.name}.incomplete")
        rows = sum(int(self.state["done"][str(i)]["rows"]) for i in indices)
        if output_format == "parquet":
            with pq.ParquetWriter(tmp, schema, **PARQUET_OPTIONS) as writer:
                for i in indices:
                    writer.write_table(pq.read_table(self.path(i), schema=schema))
        else:
            self._write_npy(tmp, schema, indices, rows)
        tmp.replace(self.output)
        shutil.rmtree(self.dir)
        return rows

    def _write_npy(self, tmp: Path, schema: pa.Schema, indices: range, rows: int) -> None:
        vec = schema.field(1)
        dtype = np.dtype(vec.type.value_type.to_pandas_dtype())
        ids_path = npy_ids_path(self.output)
        ids_tmp = ids_path.with_name(f".{ids_path.name}.incomplete")
        with tmp.open("wb") as f, ids_tmp.open("w") as ids_out:
            np.lib.format.write_array_header_1_0(
                f, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
                    "shape": (rows, vec.type.list_size)})
            for i in indices:
                table = pq.read_table(self.path(i), schema=schema)
                values = table.column(1).combine_chunks().flatten().to_numpy()
                f.write(np.ascontiguousarray(values, dtype=dtype).tobytes())
                ids_out.writelines(json.dumps(x) + "\n" for x in table.column(ID_COLUMN).to_pylist())
        ids_tmp.replace(ids_path)


def npy_ids_path(output: Path) -> Path:
    """Where the ids of a ``.npy`` output go, one JSON value a line, in the rows' order: ``X.ids.jsonl``."""
    return output.with_name(output.stem + ".ids.jsonl")

