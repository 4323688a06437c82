"""The shared embed flow of both embed routes: limits, disconnect watching, metrics, timing headers."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Sequence
from typing import Literal

import numpy as np
from fastapi import Request

from mipic.modeldir.tokenizer import Direction
from mipic.service.engine.depth import AutoDepth
from mipic.service.engine.engine import EmbedResult, Engine
from mipic.service.engine.errors import EmptyInput, InvalidRequest
from mipic.service.metrics import Metrics
from mipic.service.settings import Settings


class ClientGone(Exception):
    """The client disconnected before its embeddings were ready."""


def check_inputs(texts: Sequence[str | Sequence[int]], param: str, settings: Settings) -> None:
    """Cheap checks before any work: count, empty items, lone surrogates (token ids: see the tokenizer)."""
    if not texts:
        raise EmptyInput(f"{param} must not be empty", param=param)
    if len(texts) > settings.max_inputs_per_request:
        raise InvalidRequest(
            f"{param} has {len(texts)} items; at most {settings.max_inputs_per_request} per request",
            param=param,
        )
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            if len(text) == 0:
                raise InvalidRequest(f"{param}[{i}] is an empty list of token ids", param=f"{param}[{i}]")
            continue
        if not text:
            raise InvalidRequest(f"{param}[{i}] is an empty string", param=f"{param}[{i}]")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # JSON allows lone surrogates ("\ud800"); no tokenizer does
            raise InvalidRequest(f"{param}[{i}] is not valid Unicode (lone surrogate)", param=f"{param}[{i}]") from None


def depth_of(layer: int | Literal["auto"] | None, min_layer: int | None = None, max_layer: int | None = None,
             max_latency_ms: float | None = None) -> int | AutoDepth | None:
    """What a request asked for its depth: a layer, ``"auto"`` with its bounds and target, or the default.
    Bounds and a target without ``layer: "auto"`` are refused (they would be silently ignored)."""
    if layer == "auto":
        return AutoDepth(min_layer, max_layer, max_latency_ms)
    for name, value in (("min_layer", min_layer), ("max_layer", max_layer), ("max_latency_ms", max_latency_ms)):
        if value is not None:
            raise InvalidRequest(f'{name} applies only with layer "auto" (got layer={layer})', param=name)
    return layer


async def _disconnected(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def embed_for_request(
    request: Request,
    engine: Engine,
    metrics: Metrics,
    endpoint: str,
    texts: Sequence[str | Sequence[int]],
    dim: int | None,
    layer: int | AutoDepth | None,
    dim_param: str,
    *,
    outputs: Sequence[str] = ("float",),
    output_param: str = "encoding_format",
    truncate: bool | None = None,
    direction: Direction = "right",
    input_param: str = "input",
) -> tuple[EmbedResult, dict[str, str]]:
    """Run one embed request; if the client goes away first, its queued rows are dropped unrun."""
    t0 = time.perf_counter()
    work = asyncio.ensure_future(engine.embed(
        texts, dim, layer, dim_param, outputs=outputs, output_param=output_param, truncate=truncate,
        direction=direction, input_param=input_param,
    ))
    watcher = asyncio.ensure_future(_disconnected(request))
    unfinished = False
    try:
        await asyncio.wait({work, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not work.done():  # the client left, or the drain deadline cancelled this request:
            unfinished = True  # its queued rows are dropped before they cost compute
            work.cancel()
    if unfinished:
        raise ClientGone()
    result = work.result()
    total = time.perf_counter() - t0
    version = result.model_version
    metrics.request_duration.labels(endpoint, str(result.dim), str(result.layer), version).observe(total)
    metrics.tokenization_duration.labels(version).observe(result.tokenization_seconds)
    metrics.embeddings.labels(str(result.dim), str(result.layer), version).inc(len(result.vectors))
    metrics.exit_layer_requests.labels("auto" if result.auto else "fixed", str(result.layer), version).inc()
    metrics.tokens.labels(version).inc(result.tokens)
    headers = {
        "x-total-time": f"{total * 1000:.3f}",
        "x-tokenization-time": f"{result.tokenization_seconds * 1000:.3f}",
        "x-queue-time": f"{result.queue_seconds * 1000:.3f}",
        "x-inference-time": f"{result.inference_seconds * 1000:.3f}",
        "x-model-version": result.model_id,
        "x-exit-layer": str(result.layer),
        "x-exit-layer-mode": "auto" if result.auto else "fixed",
    }
    return result, headers


def encode_base64(vector: np.ndarray) -> str:
    """base64 of the little-endian float32 bytes, as OpenAI sends it (the official client decodes it so)."""
    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")


def to_json(values: np.ndarray, output: str) -> np.ndarray | list[str]:
    """(N, dim) output array → what the response writes: the array itself (floats, or integers for
    int8/uint8/binary/ubinary; ``VectorsJSONResponse`` writes it without converting it to Python numbers),
    or one base64 string per row."""
    if output == "base64":
        return [encode_base64(v) for v in values]
    return np.ascontiguousarray(values)
