"""`mipic embed` on the tiny model: every input format and output type gives the runner's own vectors; several
budgets share layers; an interrupted run resumes to the same bytes; bad rows are named (or skipped and
counted) and never leave a half-written output."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from mipic.cli import app
from mipic.corpus.embedder import EmbedJob
from mipic.corpus.inputs import CorpusError, Source
from mipic.corpus.job import embed_corpus
from mipic.corpus.outputs import Parts, npy_ids_path
from mipic.modeldir.runner import LoadedModel, Row

WORDS = ["the", "a", "cat", "dog", "fox", "quick", "brown", "lazy", "jumps", "over", "embed", "layer", "dim",
         "model", "text", "short", "long"]


def texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 30))) for _ in range(n)]


def write_input(path: Path, items: list[dict[str, object]]) -> Path:
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(i) + "\n" for i in items))
    elif path.suffix == ".csv":
        with path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(items[0]))
            w.writeheader()
            w.writerows(items)
    else:
        pq.write_table(pa.Table.from_pylist(items), path, row_group_size=7)  # windows cross row groups
    return path


def vectors(path: Path, column: str = "embedding") -> np.ndarray:
    return np.stack(pq.read_table(path).column(column).to_numpy(zero_copy_only=False))


def reference(model_dir: Path, items: list[str], dim: int, layer: int, window: int) -> np.ndarray:
    """What LoadedModel.run gives, window by window (a window is the unit the runner sorts and cuts)."""
    model = LoadedModel(model_dir, provider="cpu")
    ids = [e.ids for e in model.tokenizer.encode(items)]
    out = [np.stack(model.run([Row(ids=i, dim=dim, layer=layer) for i in ids[s:s + window]]))
           for s in range(0, len(ids), window)]
    model.close()
    return np.concatenate(out)


def job(tmp_path: Path, model_dir: Path, src: Path, out: str = "out.parquet", **kw: object) -> EmbedJob:
    fmt = {".jsonl": "jsonl", ".csv": "csv", ".parquet": "parquet"}[src.suffix]
    source = Source(src, fmt, kw.pop("text_field", "text"), kw.pop("id_field", None))  # type: ignore[arg-type]
    budgets = kw.pop("budgets", ((16, 2),))
    return EmbedJob(source, tmp_path / out, model_dir, budgets, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_every_input_format_gives_the_runners_vectors(suffix: str, tmp_path: Path, tiny_model_dir: Path) -> None:
    items = texts(50)
    src = write_input(tmp_path / f"in{suffix}", [{"doc": f"d{i}", "body": t} for i, t in enumerate(items)])
    result = embed_corpus(job(tmp_path, tiny_model_dir, src, text_field="body", id_field="doc", window_rows=16),
                          progress=False)
    assert (result.rows, result.skipped, result.windows) == (50, 0, 4)
    table = pq.read_table(tmp_path / "out.parquet")
    assert table.column("id").to_pylist() == [f"d{i}" for i in range(50)]  # input order
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), 16)
    np.testing.assert_array_equal(vectors(tmp_path / "out.parquet"), reference(tiny_model_dir, items, 16, 2, 16))
    meta = json.loads(table.schema.metadata[b"mipic"])
    assert meta["budgets"] == {"embedding": {"dim": 16, "layer": 2}} and meta["model"] == "tiny@1"
    assert not (tmp_path / "out.parquet.parts").exists()


@pytest.mark.parametrize(("output", "arrow"), [("float", pa.float32()), ("int8", pa.int8()), ("uint8", pa.uint8()),
                                               ("binary", pa.int8()), ("ubinary", pa.uint8())])
@pytest.mark.parametrize("suffix", [".parquet", ".npy"])
def test_every_output_type(output: str, arrow: pa.DataType, suffix: str, tmp_path: Path,
                           tiny_model_dir: Path) -> None:
    items = texts(40, seed=1)
    src = write_input(tmp_path / "in.jsonl", [{"text": t} for t in items])
    embed_corpus(job(tmp_path, tiny_model_dir, src, f"out{suffix}", budgets=((16, 3),), embedding_type=output,
                     window_rows=64), progress=False)
    model = LoadedModel(tiny_model_dir, provider="cpu")
    want = model.quantize(reference(tiny_model_dir, items, 16, 3, 64), 16, 3, output)
    width = 2 if output in ("binary", "ubinary") else 16
    if suffix == ".npy":
        got = np.load(tmp_path / "out.npy")
        ids = [json.loads(line) for line in npy_ids_path(tmp_path / "out.npy").read_text().splitlines()]
        assert ids == list(range(40))  # row numbers without --id-field
    else:
        field = pq.read_schema(tmp_path / "out.parquet").field("embedding")
        assert field.type == pa.list_(arrow, width)
        got = vectors(tmp_path / "out.parquet")
    assert got.dtype == arrow.to_pandas_dtype() and got.shape == (40, width)
    np.testing.assert_array_equal(got, want)


def test_several_budgets_run_shared_layers_once(tmp_path: Path, tiny_model_dir: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    items = texts(30, seed=2)
    src = write_input(tmp_path / "in.jsonl", [{"text": t} for t in items])
    calls: list[int] = []
    real = LoadedModel.pool_all_layers

    def counting(self: LoadedModel, ids: list[np.ndarray], layers: list[int] | None = None) -> np.ndarray:
        original = self.runtime.layer
        self.runtime.layer = lambda i, *a, **k: calls.append(i) or original(i, *a, **k)  # type: ignore[method-assign]
        try:
            return real(self, ids, layers)
        finally:
            self.runtime.layer = original  # type: ignore[method-assign]

    monkeypatch.setattr(LoadedModel, "pool_all_layers", counting)
    result = embed_corpus(job(tmp_path, tiny_model_dir, src, budgets=((8, 1), (32, 3)), window_rows=64),
                          progress=False)
    assert result.rows == 30
    assert calls and calls == [1, 2, 3] * (len(calls) // 3)  # layers 1-3 once per sub-batch, not 1 + 3
    np.testing.assert_array_equal(vectors(tmp_path / "out.parquet", "embedding_d8_l1"),
                                  reference(tiny_model_dir, items, 8, 1, 64))
    np.testing.assert_array_equal(vectors(tmp_path / "out.parquet", "embedding_d32_l3"),
                                  reference(tiny_model_dir, items, 32, 3, 64))


def test_an_interrupted_run_resumes_to_the_same_bytes(tmp_path: Path, tiny_model_dir: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    src = write_input(tmp_path / "in.jsonl", [{"id": i, "text": t} for i, t in enumerate(texts(70, seed=3))])
    embed_corpus(job(tmp_path, tiny_model_dir, src, "whole.parquet", window_rows=10, id_field="id"), progress=False)

    real = Parts.write
    written: list[int] = []

    def crash_after_three(self: Parts, index: int, *a: object) -> None:
        if len(written) == 3:
            raise KeyboardInterrupt  # as ctrl-C between windows
        written.append(index)
        real(self, index, *a)  # type: ignore[arg-type]

    monkeypatch.setattr(Parts, "write", crash_after_three)
    interrupted = job(tmp_path, tiny_model_dir, src, "resumed.parquet", window_rows=10, id_field="id")
    with pytest.raises(KeyboardInterrupt):
        embed_corpus(interrupted, progress=False)
    assert not (tmp_path / "resumed.parquet").exists()
    manifest = json.loads((tmp_path / "resumed.parquet.parts" / "manifest.json").read_text())
    assert manifest["status"] == "incomplete" and sorted(manifest["done"]) == ["0", "1", "2"]

    monkeypatch.setattr(Parts, "write", real)
    result = embed_corpus(interrupted, progress=False)
    assert (result.resumed_windows, result.windows, result.rows) == (3, 7, 70)
    assert (tmp_path / "resumed.parquet").read_bytes() == (tmp_path / "whole.parquet").read_bytes()
    assert not (tmp_path / "resumed.parquet.parts").exists()


def test_a_different_job_does_not_resume_and_an_output_is_not_replaced(tmp_path: Path, tiny_model_dir: Path) -> None:
    src = write_input(tmp_path / "in.jsonl", [{"text": t} for t in texts(12)])
    embed_corpus(job(tmp_path, tiny_model_dir, src), progress=False)
    with pytest.raises(CorpusError, match="exists; pass --overwrite"):
        embed_corpus(job(tmp_path, tiny_model_dir, src), progress=False)
    embed_corpus(job(tmp_path, tiny_model_dir, src, overwrite=True, budgets=((8, 1),)), progress=False)
    assert vectors(tmp_path / "out.parquet").shape == (12, 8)
    parts = tmp_path / "other.parquet.parts"
    parts.mkdir()
    (parts / "manifest.json").write_text(json.dumps({"status": "incomplete", "job": {"budgets": [[32, 3]]},
                                                     "windows": 1, "done": {}}))
    with pytest.raises(CorpusError, match=r"unfinished run of a different job \(.*budgets"):
        embed_corpus(job(tmp_path, tiny_model_dir, src, "other.parquet"), progress=False)


BAD_JSONL = [
    ('{"text": "a cat"}\n\n{"text": "a dog"}\n', "in.jsonl line 2: empty line"),
    ('{"text": "a cat"}\n{"body": "a dog"}\n', "in.jsonl line 2: no field 'text'"),
    ('{"text": "a cat"}\n{"text": 42}\n', "in.jsonl line 2: 'text' is not text (int)"),
    ('{"text": "a cat"}\n{"text": ""}\n', "in.jsonl line 2: 'text' is an empty string"),
    ('{"text": "a cat"}\n{"text": null}\n', "in.jsonl line 2: 'text' is null"),
    ('{"text": "a cat"}\n{"text": "a dog"\n', "in.jsonl line 2: not valid JSON"),
    ('{"text": "a cat"}\n["a dog"]\n', "in.jsonl line 2: not a JSON object (list)"),
]


@pytest.mark.parametrize(("content", "message"), BAD_JSONL)
def test_a_bad_row_is_named_and_nothing_is_half_written(content: str, message: str, tmp_path: Path,
                                                        tiny_model_dir: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text('{"text": "the fox"}\n' * 5 + content)  # the bad row is line 7: in the second window
    with pytest.raises(CorpusError) as err:
        embed_corpus(job(tmp_path, tiny_model_dir, src, window_rows=4), progress=False)
    assert str(err.value).startswith(message.replace("line 2", "line 7")), str(err.value)
    assert "--on-error skip" in str(err.value)
    assert not (tmp_path / "out.parquet").exists()
    manifest = json.loads((tmp_path / "out.parquet.parts" / "manifest.json").read_text())
    assert manifest["status"] == "incomplete" and list(manifest["done"]) == ["0"]
    skipped = embed_corpus(job(tmp_path, tiny_model_dir, src, window_rows=4, on_error="skip", overwrite=True),
                           progress=False)
    rows = 5 + content.count("\n")
    assert (skipped.rows, skipped.skipped) == (rows - 1, 1)
    assert skipped.skipped_examples[0].startswith(message.replace("line 2", "line 7"))
    assert pq.read_table(tmp_path / "out.parquet").column("id").to_pylist() == [r for r in range(rows) if r != 6]


def test_bad_csv_and_parquet_rows(tmp_path: Path, tiny_model_dir: Path) -> None:
    src = tmp_path / "in.csv"
    src.write_text('id,text\n1,the cat\n\n2,"a dog\nover two lines"\n3\n4,the fox\n')
    result = embed_corpus(job(tmp_path, tiny_model_dir, src, id_field="id", on_error="skip"), progress=False)
    assert result.skipped_examples == ["in.csv line 3: empty line", "in.csv line 6: no field 'text'"]
    assert pq.read_table(tmp_path / "out.parquet").column("id").to_pylist() == ["1", "2", "4"]

    pq.write_table(pa.table({"text": ["the cat", None, "a dog"]}), tmp_path / "in.parquet")
    with pytest.raises(CorpusError, match=r"^in.parquet row 1: 'text' is null"):
        embed_corpus(job(tmp_path, tiny_model_dir, tmp_path / "in.parquet", "p.parquet"), progress=False)
    pq.write_table(pa.table({"text": [1, 2]}), tmp_path / "ints.parquet")
    with pytest.raises(CorpusError, match=r"row 0: 'text' is not text \(int\)"):
        embed_corpus(job(tmp_path, tiny_model_dir, tmp_path / "ints.parquet", "q.parquet"), progress=False)


@pytest.mark.parametrize(("make", "message"), [
    (lambda t: t / "missing.jsonl", "cannot read .*missing.jsonl: No such file"),
    (lambda t: (t / "dir.jsonl").mkdir() or t / "dir.jsonl", "cannot read .*dir.jsonl: Is a directory"),
    (lambda t: (t / "bad.parquet").write_text("not parquet") and t / "bad.parquet", "cannot read .*as Parquet"),
    (lambda t: (t / "h.csv").write_text("a,b\n1,2\n") and t / "h.csv", r"no column 'text' \(columns: a, b\)"),
    (lambda t: pq.write_table(pa.table({"body": ["x"]}), t / "c.parquet") or t / "c.parquet",
     r"no column 'text' \(columns: body\)"),
])
def test_an_unreadable_input_is_refused_before_any_output(make, message: str, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                          tiny_model_dir: Path) -> None:
    src = make(tmp_path)
    with pytest.raises(CorpusError, match=message):
        embed_corpus(job(tmp_path, tiny_model_dir, src), progress=False)
    assert not (tmp_path / "out.parquet").exists() and not (tmp_path / "out.parquet.parts").exists()


def test_the_cli(tmp_path: Path, tiny_model_dir: Path) -> None:
    src = write_input(tmp_path / "in.jsonl", [{"text": t} for t in texts(20)] + [{"text": 3}])
    out = tmp_path / "o.parquet"
    ok = CliRunner().invoke(app, ["embed", str(src), str(out), "--model", str(tiny_model_dir), "--budget", "8:1",
                                  "--budget", "32:3", "--on-error", "skip", "--embedding-type", "ubinary"])
    assert ok.exit_code == 0, ok.output
    assert "embedded 20 texts at 8:1, 32:3" in ok.stdout and "skipped 1 bad rows" in ok.stdout
    assert "skipped: in.jsonl line 21: 'text' is not text (int)" in ok.stderr
    assert "text/s" in ok.stderr  # the progress bar
    assert pq.read_schema(out).names == ["id", "embedding_d8_l1", "embedding_d32_l3"]
    for argv, words in [
        (["--dim", "7"], "dim=7 is not served by tiny"),
        (["--budget", "8:1", "--dim", "8"], "give --budget, or --dim/--layer, not both"),
        (["--budget", "8:1", "--budget", "8:1"], "a budget is given twice"),
        (["--layer", "9"], "layer=9 must be between 1 and 3"),
        ([], "exists; pass --overwrite"),
        (["--budget", "8:1", "--budget", "32:3", "--output-npy"], "a .npy output holds one budget"),
    ]:
        target = tmp_path / "o.npy" if "--output-npy" in argv else out
        argv = [a for a in argv if a != "--output-npy"]
        bad = CliRunner().invoke(app, ["embed", str(src), str(target), "--model", str(tiny_model_dir), *argv])
        assert bad.exit_code == 2 and words in bad.stderr and len(bad.stderr.strip().splitlines()) == 1, bad.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "o.parquet"]  # refusals leave nothing behind


def test_the_cli_on_one_global_thread_pool(tmp_path: Path, tiny_model_dir: Path) -> None:
    """``--thread-pool global`` (in its own process: the pool is process-wide) writes the vectors the runner gives
    on per-session pools; an unknown choice is refused naming the option."""
    import subprocess
    import sys

    items = texts(20)
    src = write_input(tmp_path / "in.jsonl", [{"text": t} for t in items])
    out = tmp_path / "o.parquet"
    done = subprocess.run([sys.executable, "-m", "mipic.cli", "embed", str(src), str(out), "--model",
                           str(tiny_model_dir), "--budget", "32:3", "--thread-pool", "global", "--no-progress"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    np.testing.assert_allclose(vectors(out), reference(tiny_model_dir, items, 32, 3, 1000), atol=1e-5)
    bad = CliRunner().invoke(app, ["embed", str(src), str(tmp_path / "x.parquet"), "--model", str(tiny_model_dir),
                                   "--thread-pool", "shared"])
    assert bad.exit_code == 2 and "--thread-pool" in bad.stderr, bad.output
