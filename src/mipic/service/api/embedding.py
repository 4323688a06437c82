"""The shared embed flow of the embed routes: limits, query/body merging, disconnect watching, metrics, timing
headers."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Coroutine, Sequence
from typing import Any, Literal, TypeVar

import numpy as np
from fastapi import Request

from mipic.service.api.errors import ClientGone, Conflict
from mipic.service.api.schemas import DepthFields, DepthQuery
from mipic.service.engine.depth import AutoDepth
from mipic.service.engine.engine import EmbedResult
from mipic.service.engine.errors import EmptyInput, InvalidRequest
from mipic.service.metrics import Metrics
from mipic.service.settings import Settings

T = TypeVar("T")


def check_inputs(texts: Sequence[str | Sequence[int]], name: str, settings: Settings) -> None:
    """Cheap checks before any work: count, empty items, lone surrogates (token ids: see the tokenizer); ``name``:
    what this surface calls its inputs."""
    if not texts:
        raise EmptyInput(f"{name} must not be empty", field=name)
    if len(texts) > settings.max_inputs_per_request:
        raise InvalidRequest(
            f"{name} has {len(texts)} items; at most {settings.max_inputs_per_request} per request",
            field=name,
        )
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            if len(text) == 0:
                raise InvalidRequest(f"{name}[{i}] is an empty list of token ids", field=f"{name}[{i}]")
            continue
        if not text:
            raise InvalidRequest(f"{name}[{i}] is an empty string", field=f"{name}[{i}]")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # JSON allows lone surrogates ("\ud800"); no tokenizer does
            raise InvalidRequest(f"{name}[{i}] is not valid Unicode (lone surrogate)", field=f"{name}[{i}]") from None


def depth_of(layer: int | Literal["auto"] | None, min_layer: int | None = None, max_layer: int | None = None,
             max_latency_ms: float | None = None) -> int | AutoDepth | None:
    """What a request asked for its depth: a layer, ``"auto"`` with its bounds and target, or the default.
    Bounds and a target without ``layer: "auto"`` are refused (they would be silently ignored)."""
    if layer == "auto":
        return AutoDepth(min_layer, max_layer, max_latency_ms)
    for name, value in (("min_layer", min_layer), ("max_layer", max_layer), ("max_latency_ms", max_latency_ms)):
        if value is not None:
            raise InvalidRequest(f'{name} applies only with layer "auto" (got layer={layer})', field=name)
    return layer


def agreed(name: str, given: Sequence[T | None], conflict: str) -> T | None:
    """One value of a field a request may give in several places (query string, body, TEI's ``dimensions`` beside
    ``dim``), in that order: the first given, when every given one agrees; else :class:`Conflict` (400) with the
    message ``conflict`` (a template of ``name``, ``given``: the distinct values in order, ``ordered``: sorted)."""
    distinct = list(dict.fromkeys(v for v in given if v is not None))
    if len(distinct) > 1:
        raise Conflict(conflict.format(name=name, given=distinct, ordered=sorted(distinct, key=str)), "conflict", name)
    return distinct[0] if distinct else None


def merged_depth(query: DepthQuery, body: DepthFields, conflict: str) -> int | AutoDepth | None:
    """``depth_of`` the depth fields a request gave in its query string and its body (see :func:`agreed`)."""
    return depth_of(agreed("layer", (query.layer, body.layer), conflict),
                    agreed("min_layer", (query.min_layer, body.min_layer), conflict),
                    agreed("max_layer", (query.max_layer, body.max_layer), conflict),
                    agreed("max_latency_ms", (query.max_latency_ms, body.max_latency_ms), conflict))


async def _disconnected(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def embed_for_request(
    request: Request, metrics: Metrics, endpoint: str, embedding: Coroutine[Any, Any, EmbedResult]
) -> tuple[EmbedResult, dict[str, str]]:
    """Run one embed request, ``embedding`` (the engine's ``embed(...)``, not yet started: the route says what to
    embed, this says how a request runs); if the client goes away first, its queued rows are dropped unrun."""
    t0 = time.perf_counter()
    work = asyncio.ensure_future(embedding)
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
