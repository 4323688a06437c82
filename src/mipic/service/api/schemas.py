"""Request and response bodies (native ``/embed`` and OpenAI-compatible ``/v1/embeddings``)."""

from __future__ import annotations

from functools import partial
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, Strict, StrictInt, WithJsonSchema
from pydantic_core import PydanticCustomError

# Output types of an embedding: float32 values, their base64 (little-endian float32 bytes, OpenAI's
# format), or the quantised types of ``mipic.modeldir.vector.quantize``.
EmbeddingType = Literal["float", "base64", "int8", "uint8", "binary", "ubinary"]
TokenId = Annotated[int, Strict()]


def _layer_choice(value: object, *, from_query: bool) -> int | str:
    """An exit layer (a JSON integer; in a query string, digits) or ``"auto"``, with one clear message."""
    if value == "auto":
        return "auto"
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if from_query and isinstance(value, str) and value.lstrip("-").isdigit():
        return int(value)
    raise PydanticCustomError("layer_choice", 'must be an exit layer (an integer) or "auto", got {value}',
                              {"value": repr(value)})


_LAYER_SCHEMA = WithJsonSchema({"anyOf": [{"type": "integer"}, {"const": "auto", "type": "string"}]})
# An exit layer, or "auto": the server picks the deepest one it expects to answer within the latency target.
LayerChoice = Annotated[int | Literal["auto"], PlainValidator(partial(_layer_choice, from_query=False)), _LAYER_SCHEMA]
LayerChoiceQuery = Annotated[int | Literal["auto"], PlainValidator(partial(_layer_choice, from_query=True)),
                             _LAYER_SCHEMA]
LAYER_DESCRIPTION = ('Exit layer, 1..num_layers, or "auto": the server picks the deepest exit within min_layer.. '
                     "max_layer that it expects to answer within max_latency_ms (the layer served is in the "
                     "x-exit-layer header); default the last layer")


MIN_LAYER_DESCRIPTION = 'With layer "auto": the shallowest exit allowed (default 1)'
MAX_LAYER_DESCRIPTION = 'With layer "auto": the deepest exit allowed (default the last)'
LATENCY_DESCRIPTION = 'With layer "auto": the latency target (default: the server\'s auto_max_latency_ms)'
LatencyMs = Annotated[float, Field(gt=0, allow_inf_nan=False)]


class DepthFields(BaseModel):
    """The exit layer, or ``"auto"`` with its bounds and latency target (every embed surface takes these)."""

    layer: LayerChoice | None = Field(None, description=LAYER_DESCRIPTION)
    min_layer: StrictInt | None = Field(None, description=MIN_LAYER_DESCRIPTION)
    max_layer: StrictInt | None = Field(None, description=MAX_LAYER_DESCRIPTION)
    max_latency_ms: LatencyMs | None = Field(None, description=LATENCY_DESCRIPTION)


class DepthQuery(BaseModel):
    """The same depth fields in a query string (``?layer=auto&min_layer=2``): the same fields, with the
    integers parsed from text (the body's are strict JSON integers)."""

    layer: LayerChoiceQuery | None = Field(None, description=LAYER_DESCRIPTION)
    min_layer: int | None = Field(None, description=MIN_LAYER_DESCRIPTION)
    max_layer: int | None = Field(None, description=MAX_LAYER_DESCRIPTION)
    max_latency_ms: LatencyMs | None = Field(None, description=LATENCY_DESCRIPTION)


class EmbedRequest(DepthFields):
    """``POST /embed``: ``dim``/``layer`` may be given here or in the query string."""

    model_config = ConfigDict(extra="forbid")

    inputs: str | list[str]
    # Strict: a JSON integer only, never true/false or "64" (a boolean would silently serve layer 1).
    dim: StrictInt | None = Field(None, description="Output dimension (Matryoshka prefix); default full width")
    embedding_types: list[EmbeddingType] | None = Field(
        None,
        min_length=1,
        description="Output types to return (each computed from the same unit vector): float, base64, int8, "
        "uint8 (calibrated per (layer, dim) at export), binary, ubinary (packed sign bits; dim a multiple of "
        "8). Given: `embeddings` is an object keyed by type; omitted: a list of float vectors.",
    )


class Usage(BaseModel):
    tokens: int


class EmbedResponse(BaseModel):
    embeddings: list[list[float]] | dict[str, list[list[float]] | list[list[int]] | list[str]] = Field(
        description="float vectors; with `embedding_types`, an object: type → one row per input"
    )
    dim: int
    layer: int
    model: str
    usage: Usage


class OpenAIEmbeddingRequest(DepthFields):
    """OpenAI's embeddings request, plus the ``layer`` extension (with ``"auto"`` and its bounds)."""

    model_config = ConfigDict(extra="ignore")

    input: str | list[str] | list[list[TokenId]] | list[TokenId] = Field(
        description="Text or texts. Token-id arrays (what OpenAI clients send after tokenizing with tiktoken) "
        "are refused with 400: this server tokenizes text itself."
    )
    model: str | None = Field(None, description="The served model's name, `name@version`, or an alias")
    dimensions: StrictInt | None = None
    encoding_format: EmbeddingType = Field(
        "float", description="float, base64 (little-endian float32), int8, uint8, binary or ubinary"
    )
    user: str | None = Field(None, description="Accepted and ignored")


class OpenAIEmbedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | list[int] | str


class OpenAIUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class OpenAIEmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[OpenAIEmbedding]
    model: str
    usage: OpenAIUsage


class OpenAIModel(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(description="Unix time the served version was exported")
    owned_by: str = "mipic"
    root: str = Field(description="The served model's name (an alias's target)")
    version: str


class OpenAIModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[OpenAIModel]


class BudgetInfo(BaseModel):
    dim: int
    layer: int


class HeadsInfo(BaseModel):
    """Exit heads the model carries: how they were fitted and for which budgets."""

    method: str
    fitted_budgets: list[BudgetInfo]
    recipe: dict[str, str | int | float | bool]
    data: dict[str, str | int]


class BudgetEntry(BaseModel):
    dim: int
    layer: int
    relative_cost: float = Field(description="compute relative to the full budget (1.0)")
    quality: float = Field(description="mean of the built-in suites' main metrics, measured at export")
    scores: dict[str, float] = Field(default_factory=dict)
    pareto: bool = Field(description="no other budget is at least as good for at most the cost")
    index_quality: float | None = Field(
        None, description="retrieval quality with queries at this budget against documents embedded at (dim, "
        "last layer): what this exit is worth against an index built at full depth (null: not measured)")
    index_scores: dict[str, float] = Field(default_factory=dict, description="retrieval suite → index metric")
    cosine_to_last: float | None = Field(
        None, description="mean cosine between a text's vector here and at (dim, last layer) (null: not measured)")


class ExitSpaceInfo(BaseModel):
    """Whether vectors from different exits can be compared (a query at any layer against a last-layer index)."""

    shared: bool | None = Field(description="true: every exit shares the last layer's space; false: each exit "
                                "has its own, so query and index must use the same layer; null: not measured")
    worst_cosine: float | None = Field(None, description="lowest mean cosine of a budget to (dim, last layer)")
    worst_budget: BudgetInfo | None = None
    min_cosine_required: float | None = None
    note: str = ""


class BudgetsResponse(BaseModel):
    """``GET /budgets``: what each (dim, layer) costs and buys, with the Pareto-optimal ones marked."""

    model: str
    available: bool = Field(description="false when the model's manifest has no budget table")
    suites: dict[str, str] = Field(default_factory=dict, description="suite → its main metric")
    budgets: list[BudgetEntry] = Field(default_factory=list)
    recommended: BudgetEntry | None = Field(
        None, description="with min_quality: the cheapest budget whose quality reaches it (null if none does)"
    )
    stage_ms: list[float] = Field(default_factory=list, description="measured ms: embeddings, layer 1..L")
    timing_machine: str = ""
    eval_items: int = 0
    index_suites: dict[str, str] = Field(
        default_factory=dict, description="retrieval suites behind index_quality (queries here, documents at the "
        "last layer) → their main metric")
    exit_space: ExitSpaceInfo | None = None


class InfoResponse(BaseModel):
    model: str
    name: str
    version: str
    architecture: str
    hidden_size: int
    num_layers: int
    dims: list[int]
    layers: list[int]
    trained_budgets: list[BudgetInfo]
    max_seq_length: int
    pooling: str
    precision: str
    provider: str
    max_inputs_per_request: int
    heads: HeadsInfo | None = Field(None, description="exit heads, null when the model serves plain truncation")
    pareto_budgets: list[BudgetEntry] = Field(
        default_factory=list, description="the Pareto-optimal budgets of GET /budgets (cheapest first)"
    )
    exit_space: ExitSpaceInfo = Field(description="do vectors from different exit layers share one space?")


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail
