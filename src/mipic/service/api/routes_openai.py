"""OpenAI-compatible ``POST /v1/embeddings`` (with a ``layer`` extension), ``GET /v1/models`` and
``GET /v1/models/{id}``.

Model names: the served model's name, ``name@version``, every ``MIPIC_MODEL_ALIASES`` entry, or any name
with ``MIPIC_ACCEPT_ANY_MODEL``; the response's ``model`` is the name the client asked for.
"""

from __future__ import annotations

import datetime as _dt

from fastapi import APIRouter, Request

from mipic.modeldir.runner import LoadedModel
from mipic.service.api.deps import JSON_IN, EngineDep, MetricsDep, SettingsDep
from mipic.service.api.embedding import check_inputs, depth_of, embed_for_request, to_json
from mipic.service.api.responses import VectorsJSONResponse
from mipic.service.api.routes_embed import ERROR_RESPONSES
from mipic.service.api.schemas import (
    OpenAIEmbeddingRequest,
    OpenAIEmbeddingResponse,
    OpenAIModel,
    OpenAIModelList,
)
from mipic.service.engine.errors import InvalidRequest, ModelNotFound
from mipic.service.settings import Settings

router = APIRouter(prefix="/v1", tags=["openai"])

TOKEN_IDS_REFUSED = (
    "{param} is a list of token ids; this server tokenizes text itself and cannot read another tokenizer's ids "
    "(OpenAI clients tokenize with tiktoken). Send strings: for LangChain's OpenAIEmbeddings set "
    "check_embedding_ctx_length=False. Ids in this model's own vocabulary (from /tei/tokenize) are accepted by "
    "POST /tei/embed."
)


def served_names(model: LoadedModel, settings: Settings) -> list[str]:
    """The names /v1 accepts (besides any name with accept_any_model), the served one first."""
    m = model.manifest
    return [m.name, *(a for a in settings.model_aliases if a != m.name)]


def resolve_model_name(requested: str | None, model: LoadedModel, settings: Settings, param: str) -> str:
    """The name to echo back; 404 for a name this server does not answer to."""
    m = model.manifest
    if requested is None:
        return m.name
    if settings.accept_any_model or requested == m.model_id or requested in served_names(model, settings):
        return requested
    names = served_names(model, settings)
    raise ModelNotFound(
        f"model {requested!r} is not served here; use one of {names} (or set MIPIC_MODEL_ALIASES / "
        "MIPIC_ACCEPT_ANY_MODEL on the server)",
        field=param,
    )


def _created(model: LoadedModel) -> int:
    """Unix time of the manifest's ``created_at`` (0 when the export did not record it)."""
    try:
        return int(_dt.datetime.fromisoformat(model.manifest.created_at).timestamp())
    except ValueError:
        return 0


def model_object(name: str, model: LoadedModel) -> OpenAIModel:
    m = model.manifest
    return OpenAIModel(id=name, created=_created(model), root=m.name, version=m.version)


@router.post(
    "/embeddings",
    response_model=OpenAIEmbeddingResponse,
    responses=ERROR_RESPONSES,
    dependencies=JSON_IN,
)
async def create_embeddings(
    request: Request,
    body: OpenAIEmbeddingRequest,
    engine: EngineDep,
    metrics: MetricsDep,
    settings: SettingsDep,
) -> VectorsJSONResponse:
    name = resolve_model_name(body.model, engine.model, settings, "model")
    texts = [body.input] if isinstance(body.input, str) else body.input
    for i, item in enumerate(texts):
        if isinstance(item, int):
            raise InvalidRequest(TOKEN_IDS_REFUSED.format(param="input"), field="input")
        if not isinstance(item, str):
            raise InvalidRequest(TOKEN_IDS_REFUSED.format(param=f"input[{i}]"), field=f"input[{i}]")
    strings = [t for t in texts if isinstance(t, str)]
    check_inputs(strings, "input", settings)
    output = "float" if body.encoding_format == "base64" else body.encoding_format
    result, headers = await embed_for_request(request, metrics, "/v1/embeddings", engine.embed(
        strings, body.dimensions, depth_of(body.layer, body.min_layer, body.max_layer, body.max_latency_ms),
        outputs=(output,),
    ))
    rows = to_json(result.outputs[output], body.encoding_format)
    payload = {  # OpenAIEmbeddingResponse, written once (api/responses.py)
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": row} for i, row in enumerate(rows)],
        "model": name,
        "usage": {"prompt_tokens": result.tokens, "total_tokens": result.tokens},
        **({"layer": result.layer} if result.auto else {}),  # extension: the exit the server chose
    }
    return VectorsJSONResponse(payload, headers=headers)


@router.get("/models", response_model=OpenAIModelList)
async def list_models(engine: EngineDep, settings: SettingsDep) -> OpenAIModelList:
    """The served model and its aliases (one model object each; ``root`` is the served name)."""
    model = engine.model
    return OpenAIModelList(data=[model_object(n, model) for n in served_names(model, settings)])


@router.get("/models/{model_id:path}", response_model=OpenAIModel, responses=ERROR_RESPONSES)
async def retrieve_model(model_id: str, engine: EngineDep, settings: SettingsDep) -> OpenAIModel:
    """One model object for any name ``/v1/embeddings`` accepts; 404 otherwise."""
    model = engine.model
    return model_object(resolve_model_name(model_id, model, settings, "model"), model)
