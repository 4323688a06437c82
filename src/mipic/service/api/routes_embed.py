"""``POST /embed``: the native endpoint with ``dim`` and ``layer`` in the query or the body, and
``embedding_types`` for compact outputs."""

from __future__ import annotations

from typing import Annotated, TypeVar

from fastapi import APIRouter, Depends, Query, Request

from mipic.service.api.deps import EngineDep, MetricsDep, SettingsDep, require_api_key, require_json
from mipic.service.api.embedding import check_inputs, depth_of, embed_for_request, to_json
from mipic.service.api.errors import ApiError
from mipic.service.api.responses import VectorsJSONResponse
from mipic.service.api.schemas import DepthQuery, EmbedRequest, EmbedResponse, ErrorResponse

router = APIRouter(tags=["embeddings"])
T = TypeVar("T")

ERROR_RESPONSES: dict[int | str, dict[str, object]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 404, 413, 415, 429, 500, 503, 504)
}


def _merged(name: str, query: T | None, body: T | None) -> T | None:
    """A field given in the query, the body or both (then they must agree)."""
    if query is not None and body is not None and query != body:
        raise ApiError(400, f"{name} given as {query} in the query and {body} in the body", "conflict", name)
    return query if query is not None else body


@router.post(
    "/embed",
    response_model=EmbedResponse,
    responses=ERROR_RESPONSES,
    dependencies=[Depends(require_json), Depends(require_api_key)],
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
    q = depth_query
    depth = depth_of(_merged("layer", q.layer, body.layer), _merged("min_layer", q.min_layer, body.min_layer),
                     _merged("max_layer", q.max_layer, body.max_layer),
                     _merged("max_latency_ms", q.max_latency_ms, body.max_latency_ms))
    wanted = list(dict.fromkeys(body.embedding_types or ["float"]))  # each once, in the order asked
    engine_outputs = tuple(dict.fromkeys("float" if t == "base64" else t for t in wanted))
    result, headers = await embed_for_request(
        request, engine, metrics, "/embed", texts,
        _merged("dim", dim, body.dim), depth, "dim",
        outputs=engine_outputs, output_param="embedding_types",
    )
    by_type = {t: to_json(result.outputs["float" if t == "base64" else t], t) for t in wanted}
    payload = {  # EmbedResponse, written once (api/responses.py)
        "embeddings": by_type if body.embedding_types else by_type["float"],
        "dim": result.dim,
        "layer": result.layer,
        "model": result.model_id,
        "usage": {"tokens": result.tokens},
    }
    return VectorsJSONResponse(payload, headers=headers)
