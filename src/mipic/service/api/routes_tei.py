"""text-embeddings-inference's protocol under ``/tei``, so TEI clients work with base URL ``.../tei``.

``POST /tei`` and ``POST /tei/embed`` (TEI's fields, a bare ``[[...]]`` response; ``dim``/``layer`` as
extensions, in the body or the query), ``POST /tei/tokenize``, ``POST /tei/decode``, ``GET /tei/info``
(TEI's fields) and ``GET /tei/health``. Errors here have TEI's shape ``{"error", "error_type"}``
(``api/errors.py``).
"""

from __future__ import annotations

from typing import Annotated, cast

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from mipic.service.api.deps import JSON_IN, EngineDep, MetricsDep, SettingsDep
from mipic.service.api.embedding import agreed, check_inputs, embed_for_request, merged_depth
from mipic.service.api.errors import TEI_PREFIX
from mipic.service.api.responses import VectorsJSONResponse
from mipic.service.api.schemas import DepthQuery
from mipic.service.api.schemas_tei import (
    TeiDecodeRequest,
    TeiEmbeddingModel,
    TeiEmbedRequest,
    TeiErrorResponse,
    TeiInfo,
    TeiModelType,
    TeiToken,
    TeiTokenizeRequest,
)
from mipic.service.engine.errors import EmptyInput, InvalidRequest, NotReady

router = APIRouter(prefix=TEI_PREFIX, tags=["text-embeddings-inference"])

ERRORS: dict[int | str, dict[str, object]] = {
    code: {"model": TeiErrorResponse} for code in (400, 401, 404, 413, 415, 422, 429, 500, 503, 504)
}
DTYPES = {"fp32": "float32", "fp16": "float16", "int8": "int8"}
# dim (also TEI's dimensions) and the depth fields may be given in the query and the body; all given must agree
CONFLICT = "{name} given with different values: {ordered}"


def _no_prompt(prompt_name: str | None) -> None:
    if prompt_name is not None:
        raise InvalidRequest(f"prompt_name {prompt_name!r} is not available: the served model has no prompts",
                             field="prompt_name")


async def _embed(
    request: Request,
    body: TeiEmbedRequest,
    engine: EngineDep,
    metrics: MetricsDep,
    settings: SettingsDep,
    dim: int | None,
    depth: DepthQuery,
) -> JSONResponse:
    if not body.normalize:
        raise InvalidRequest("normalize=false is not supported: the vectors are always L2-normalised (the "
                             "Matryoshka prefix is re-normalised after the cut)", field="normalize")
    _no_prompt(body.prompt_name)
    inputs = body.inputs
    if isinstance(inputs, list) and not inputs:
        raise EmptyInput("`inputs` cannot be empty", field="inputs")
    items: list[str | list[int]]
    if isinstance(inputs, str) or isinstance(inputs[0], int):
        items = [cast("str | list[int]", inputs)]  # one text, or one token-id list
    else:
        items = cast("list[str | list[int]]", inputs)
    check_inputs(items, "inputs", settings)
    result, headers = await embed_for_request(request, metrics, "/tei/embed", engine.embed(
        items, agreed("dim", (dim, body.dim, body.dimensions), CONFLICT), merged_depth(depth, body, CONFLICT),
        truncate=body.truncate, direction="left" if body.truncation_direction.lower() == "left" else "right",
    ))
    return VectorsJSONResponse(result.outputs["float"], headers=headers)  # (N, dim), written once


DimQuery = Annotated[int | None, Query(description="Extension: output dimension (Matryoshka prefix)")]
DepthQueryParams = Annotated[DepthQuery, Query()]  # extension: layer (or "auto" with bounds and target)


@router.post("", response_model=list[list[float]], responses=ERRORS, dependencies=JSON_IN,
             summary="Embed (TEI's POST / for embedding models)")
async def embed_root(request: Request, body: TeiEmbedRequest, engine: EngineDep, metrics: MetricsDep,
                     settings: SettingsDep, depth: DepthQueryParams, dim: DimQuery = None) -> JSONResponse:
    return await _embed(request, body, engine, metrics, settings, dim, depth)


@router.post("/embed", response_model=list[list[float]], responses=ERRORS, dependencies=JSON_IN)
async def embed(request: Request, body: TeiEmbedRequest, engine: EngineDep, metrics: MetricsDep,
                settings: SettingsDep, depth: DepthQueryParams, dim: DimQuery = None) -> JSONResponse:
    """Pooled, L2-normalised embeddings, one row per input (TEI's ``/embed``)."""
    return await _embed(request, body, engine, metrics, settings, dim, depth)


@router.post("/tokenize", response_model=list[list[TeiToken]], responses=ERRORS, dependencies=JSON_IN)
async def tokenize(body: TeiTokenizeRequest, engine: EngineDep, settings: SettingsDep) -> list[list[TeiToken]]:
    """Tokens of each input with ids and byte offsets (truncated to max_input_length)."""
    _no_prompt(body.prompt_name)
    texts = [body.inputs] if isinstance(body.inputs, str) else body.inputs
    check_inputs(texts, "inputs", settings)
    tokenizer = engine.model.tokenizer

    def tokens() -> list[list[TeiToken]]:
        return [[TeiToken(**vars(t)) for t in tokenizer.tokens(text, body.add_special_tokens)] for text in texts]

    return await run_in_threadpool(tokens)  # off the event loop, like the embed routes' tokenization


@router.post("/decode", response_model=list[str], responses=ERRORS, dependencies=JSON_IN)
async def decode(body: TeiDecodeRequest, engine: EngineDep, settings: SettingsDep) -> list[str]:
    """Token ids (one list, or a list of lists) back to text; ids outside the vocabulary are refused."""
    if not body.ids:
        raise EmptyInput("`ids` cannot be empty", field="ids")
    tokenizer = engine.model.tokenizer
    if isinstance(body.ids[0], int):  # one list of ids
        batch, fields = [cast("list[int]", body.ids)], ["ids"]
    else:
        batch = cast("list[list[int]]", body.ids)
        fields = [f"ids[{i}]" for i in range(len(batch))]
    if len(batch) > settings.max_inputs_per_request:
        raise InvalidRequest(f"batch size {len(batch)} > maximum allowed batch size "
                             f"{settings.max_inputs_per_request}", field="ids")

    def texts() -> list[str]:
        return [tokenizer.decode(ids, body.skip_special_tokens, f) for ids, f in zip(batch, fields, strict=True)]

    return await run_in_threadpool(texts)


@router.get("/info", response_model=TeiInfo)
async def info(request: Request, engine: EngineDep, settings: SettingsDep) -> TeiInfo:
    """TEI's model and router information."""
    model = engine.model
    m = model.manifest
    return TeiInfo(
        model_id=m.name,
        model_dtype=DTYPES.get(m.precision, m.precision),
        served_model_name=m.name,
        model_type=TeiModelType(embedding=TeiEmbeddingModel(pooling=m.pooling)),
        max_concurrent_requests=settings.max_queue_size,
        max_input_length=model.tokenizer.max_length,
        max_batch_tokens=settings.max_batch_tokens,
        max_batch_requests=settings.max_batch_size,
        max_client_batch_size=settings.max_inputs_per_request,
        auto_truncate=settings.truncate,
        tokenization_workers=settings.tokenizer_threads,
        version=request.app.version,
        dims=m.dims,
        layers=m.layers,
        model_version=m.model_id,
    )


@router.get("/health", responses={503: {"model": TeiErrorResponse}})
async def health(engine: EngineDep) -> dict[str, str]:
    """200 when a model is loaded and the server is not draining (TEI's ``/health``)."""
    if not engine.ready:
        raise NotReady("model is loading or the server is draining")
    return {"status": "ok"}
