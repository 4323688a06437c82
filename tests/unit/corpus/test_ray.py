"""The Ray Data path against a local Ray instance (2 CPUs, started once for this module): the same output
file as the local run, byte for byte; a local run interrupted and finished on Ray; bad rows named."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from mipic.corpus.embedder import EmbedJob
from mipic.corpus.inputs import CorpusError, Source
from mipic.corpus.job import embed_corpus
from mipic.corpus.outputs import Parts
from tests.unit.corpus.test_embed import texts

ray = pytest.importorskip("ray", reason="the `ray` extra (scripts/install.sh installs it)")


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        yield
    finally:
        ray.shutdown()


def corpus(tmp_path: Path, n: int = 45, extra: str = "") -> Path:
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"id": f"p{i}", "text": t}) + "\n" for i, t in enumerate(texts(n, 4))) + extra)
    return src


def make(tmp_path: Path, model: Path, src: Path, out: str, **kw: object) -> EmbedJob:
    return EmbedJob(Source(src, "jsonl", "text", "id"), tmp_path / out, model, ((16, 2), (32, 3)),
                    window_rows=10, **kw)  # type: ignore[arg-type]


def test_ray_writes_the_local_runs_file(local_ray: None, tmp_path: Path, tiny_model_dir: Path) -> None:
    src = corpus(tmp_path)
    local = embed_corpus(make(tmp_path, tiny_model_dir, src, "local.parquet"), progress=False)
    on_ray = embed_corpus(make(tmp_path, tiny_model_dir, src, "ray.parquet"), progress=False, ray_address="local",
                          ray_actors=2)
    assert (on_ray.rows, on_ray.windows) == (local.rows, local.windows) == (45, 5)
    assert (tmp_path / "ray.parquet").read_bytes() == (tmp_path / "local.parquet").read_bytes()


def test_a_local_run_interrupted_is_finished_on_ray(local_ray: None, tmp_path: Path, tiny_model_dir: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    src = corpus(tmp_path)
    embed_corpus(make(tmp_path, tiny_model_dir, src, "whole.parquet"), progress=False)
    real = Parts.write

    def crash_after_two(self: Parts, index: int, *a: object) -> None:
        if len(self.state["done"]) == 2:
            raise KeyboardInterrupt
        real(self, index, *a)  # type: ignore[arg-type]

    monkeypatch.setattr(Parts, "write", crash_after_two)
    with pytest.raises(KeyboardInterrupt):
        embed_corpus(make(tmp_path, tiny_model_dir, src, "out.parquet"), progress=False)
    monkeypatch.setattr(Parts, "write", real)
    result = embed_corpus(make(tmp_path, tiny_model_dir, src, "out.parquet"), progress=False, ray_address="local")
    assert result.resumed_windows == 2
    assert (tmp_path / "out.parquet").read_bytes() == (tmp_path / "whole.parquet").read_bytes()


def test_a_bad_row_on_ray_is_named_or_skipped(local_ray: None, tmp_path: Path, tiny_model_dir: Path) -> None:
    src = corpus(tmp_path, 15, extra='{"id": "bad", "txt": "x"}\n')
    with pytest.raises(CorpusError, match=r"^in.jsonl line 16: no field 'text'"):
        embed_corpus(make(tmp_path, tiny_model_dir, src, "out.parquet"), progress=False, ray_address="local")
    assert not (tmp_path / "out.parquet").exists()
    result = embed_corpus(make(tmp_path, tiny_model_dir, src, "out.parquet", on_error="skip", overwrite=True),
                          progress=False, ray_address="local")
    assert (result.rows, result.skipped) == (15, 1)
