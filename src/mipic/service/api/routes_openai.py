"""OpenAI-compatible ``POST /v1/embeddings`` (with a ``layer`` extension) and ``GET /v1/models``."""

from __future__ import annotations

import base64

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from mipic.service.api.deps import EngineDep, MetricsDep, SettingsDep, require_api_key, require_json
from mipic.service.api.embedding import check_inputs, embed_for_request
from mipic.service.api.routes_embed import ERROR_RESPONSES
from mipic.service.api.schemas import (
    OpenAIEmbedding,
    OpenAIEmbeddingRequest,
    OpenAIEmbeddingResponse,
    OpenAIUsage,
)
from mipic.service.engine.errors import ModelNotFound

router = APIRouter(prefix="/v1", tags=["openai"])


@router.post(
    "/embeddings",
    response_model=OpenAIEmbeddingResponse,
    responses=ERROR_RESPONSES,
    dependencies=[Depends(require_json), Depends(require_api_key)],
)
async def create_embeddings(
    request: Request,
    body: OpenAIEmbeddingRequest,
    engine: EngineDep,
    metrics: MetricsDep,
    settings: SettingsDep,
) -> JSONResponse:
    model = engine.model
    if body.model is not None and body.model not in (model.manifest.name, model.model_id):
        raise ModelNotFound(
            f"model {body.model!r} is not served here; use {model.manifest.name!r}", param="model"
        )
    texts = [body.input] if isinstance(body.input, str) else body.input
    check_inputs(texts, "input", settings)
    result, headers = await embed_for_request(
        request, engine, metrics, "/v1/embeddings", texts, body.dimensions, body.layer, "dimensions"
    )
    data = [
        OpenAIEmbedding(
            index=i,
            # base64 of little-endian float32, as OpenAI sends it (the official client decodes it so)
            embedding=base64.b64encode(v.astype("<f4").tobytes()).decode("ascii")
            if body.encoding_format == "base64"
            else v.tolist(),
        )
        for i, v in enumerate(result.vectors)
    ]
    payload = OpenAIEmbeddingResponse(
        data=data,
        model=result.model_id,
        usage=OpenAIUsage(prompt_tokens=result.tokens, total_tokens=result.tokens),
    )
    return JSONResponse(payload.model_dump(), headers=headers)


@router.get("/models")
async def list_models(engine: EngineDep) -> dict[str, object]:
    m = engine.model.manifest
    return {"object": "list", "data": [{"id": m.name, "object": "model", "owned_by": "mipic",
                                        "version": m.version}]}
