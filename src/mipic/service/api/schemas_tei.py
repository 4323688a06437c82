"""Bodies of the text-embeddings-inference surface (``/tei``): TEI's request fields and bare-array responses.

Unknown fields are ignored, as TEI does; ``dim``/``layer`` are this service's extensions.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt

from mipic.service.api.schemas import DepthFields, TokenId

TeiInput = str | list[TokenId] | list[str | list[TokenId]]


class TeiEmbedRequest(DepthFields):
    """``POST /tei`` and ``POST /tei/embed``."""

    model_config = ConfigDict(extra="ignore")

    inputs: TeiInput = Field(
        description="A text, a list of texts, or token ids of this model's vocabulary (from /tei/tokenize, "
        "special tokens included), alone or in the list"
    )
    truncate: bool | None = Field(None, description="Cut inputs longer than max_input_length (default: the "
                                  "server's auto_truncate); false: refuse them")
    truncation_direction: Literal["Right", "Left", "right", "left"] = Field(
        "Right", description="Which end of a long input is cut"
    )
    prompt_name: str | None = Field(None, description="Must be null: the served model has no prompts")
    normalize: bool = Field(True, description="Must be true: vectors are always L2-normalised")
    dimensions: StrictInt | None = Field(None, description="Output dimension (Matryoshka prefix); same as `dim`")
    dim: StrictInt | None = Field(None, description="Extension: output dimension (Matryoshka prefix)")


class TeiTokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    inputs: str | list[str]
    add_special_tokens: bool = True
    prompt_name: str | None = Field(None, description="Must be null: the served model has no prompts")


class TeiToken(BaseModel):
    id: int
    text: str
    special: bool
    start: int | None = Field(description="UTF-8 byte offset in the input; null for special tokens")
    stop: int | None


class TeiDecodeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    ids: list[TokenId] | list[list[TokenId]]
    skip_special_tokens: bool = True


class TeiEmbeddingModel(BaseModel):
    pooling: str


class TeiModelType(BaseModel):
    embedding: TeiEmbeddingModel


class TeiInfo(BaseModel):
    """TEI's ``/info`` fields, plus this service's extensions (``dims``, ``layers``, ``model_version``)."""

    model_id: str
    model_sha: str | None = None
    model_dtype: str
    served_model_name: str
    model_type: TeiModelType
    max_concurrent_requests: int = Field(description="queued inputs before 429 (MIPIC_MAX_QUEUE_SIZE)")
    max_input_length: int
    max_batch_tokens: int
    max_batch_requests: int | None = Field(description="rows per batch (MIPIC_MAX_BATCH_SIZE)")
    max_client_batch_size: int = Field(description="inputs per request (MIPIC_MAX_INPUTS_PER_REQUEST)")
    auto_truncate: bool
    tokenization_workers: int
    version: str
    sha: str | None = None
    docker_label: str | None = None
    dims: list[int]
    layers: list[int]
    model_version: str


class TeiErrorResponse(BaseModel):
    error: str
    error_type: Literal["Unhealthy", "Backend", "Overloaded", "Validation", "Tokenizer", "Empty"]
