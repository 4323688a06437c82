"""The embed routes' response: JSON written once, straight from the NumPy batch.

Vectors go to the wire without ``ndarray.tolist()``, without building response models and without
``model_dump``: orjson writes float32 and int8/uint8 arrays natively (a float32 as its shortest decimal that
reads back to the same float32), ~20x faster than the standard ``json`` module over Python floats and ~45% fewer
bytes. The payloads are the dicts the routes' ``response_model`` describes (OpenAPI); tests validate them
against those models, the server does not validate them again.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi.responses import JSONResponse


class VectorsJSONResponse(JSONResponse):
    """``application/json`` rendered by orjson, NumPy arrays included (C-contiguous, which rows of a
    stacked batch are)."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)
