"""``POST /embed``: the native endpoint with ``dim`` and ``layer`` in the query or the body, and
``embedding_types`` for compact outputs."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request

from mipic.service.api.deps import JSON_IN, EngineDep, MetricsDep, SettingsDep
from mipic.service.api.embedding import agreed, check_inputs, embed_for_request, merged_depth, to_json
from mipic.service.api.responses import VectorsJSONResponse
from mipic.service.api.schemas import DepthQuery, EmbedRequest, EmbedResponse, ErrorResponse

router = APIRouter(tags=["embeddings"])

ERROR_RESPONSES: dict[int | str, dict[str, object]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 404, 413, 415, 429, 500, 503, 504)
}
# dim and the depth fields may be given in the query, the body or both (then they must agree)
CONFLICT = "{name} given as {given[0]} in the query and {given[1]} in the body"


@router.post(
    "/embed",
    response_model=EmbedResponse,
    responses=ERROR_RESPONSES,
    dependencies=JSON_IN,
)
async def embed(
    request: Request,
    body: EmbedRequest,
    engine: EngineDep,
    metrics: MetricsDep,
    settings: SettingsDep,
    depth_query: Annotated[DepthQuery, Query()],
    dim: Annotated[int | None, Query(description="Output dimension (Matryoshka prefix)")] = None,
) -> VectorsJSONResponse:
    texts = [body.inputs] if isinstance(body.inputs, str) else body.inputs
    check_inputs(texts, "inputs", settings)
    depth = merged_depth(depth_query, body, CONFLICT)
    wanted = list(dict.fromkeys(body.embedding_types or ["float"]))  # each once, in the order asked
    engine_outputs = tuple(dict.fromkeys("float" if t == "base64" else t for t in wanted))
    result, headers = await embed_for_request(request, metrics, "/embed", engine.embed(
        texts, agreed("dim", (dim, body.dim), CONFLICT), depth, outputs=engine_outputs,
    ))
    by_type = {t: to_json(result.outputs["float" if t == "base64" else t], t) for t in wanted}
    payload = {  # EmbedResponse, written once (api/responses.py)
        "embeddings": by_type if body.embedding_types else by_type["float"],
        "dim": result.dim,
        "layer": result.layer,
        "model": result.model_id,
        "usage": {"tokens": result.tokens},
    }
    return VectorsJSONResponse(payload, headers=headers)
