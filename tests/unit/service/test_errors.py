"""The error table (api/errors.py): every error class the API raises has its row, and an engine error's field key
reaches each surface under that surface's own parameter name."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from mipic.service.api import errors
from mipic.service.api.embedding import agreed
from mipic.service.engine.errors import EngineError, InputTooLong, InvalidBudget, InvalidRequest

SRC = Path(__file__).resolve().parents[3] / "src" / "mipic"


@pytest.mark.parametrize(("path", "param", "message"), [
    ("/embed", "dim", "dim=12 is not served"),
    ("/v1/embeddings", "dimensions", "dimensions=12 is not served"),
    ("/tei/embed", "dimensions", "dimensions=12 is not served"),
    ("/tei", "dimensions", "dimensions=12 is not served"),
    ("/admin/reload", "dim", "dim=12 is not served"),  # no surface names: the key is the name
])
def test_a_field_key_gets_the_surface_name(path: str, param: str, message: str) -> None:
    assert errors.surface_param(InvalidBudget("dim=12 is not served", field="dim"), path) == (message, param)


def test_indexed_fields_keep_their_index_and_unlisted_keys_stay() -> None:
    too_long = InputTooLong("input[1] is longer than the maximum of 6 tokens", field="input[1]")
    assert errors.surface_param(too_long, "/tei/embed") == ("inputs[1] is longer than the maximum of 6 tokens",
                                                            "inputs[1]")
    assert errors.surface_param(too_long, "/v1/embeddings")[1] == "input[1]"
    assert errors.surface_param(too_long, "/embed") == ("inputs[1] is longer than the maximum of 6 tokens", "inputs[1]")
    ids = InvalidRequest("input[0][3]: token id 99 is outside the vocabulary", field="input[0]")
    assert errors.surface_param(ids, "/tei")[0] == "inputs[0][3]: token id 99 is outside the vocabulary"
    output = InvalidRequest("output=binary packs 8 values per byte", field="output")
    assert errors.surface_param(output, "/embed") == ("embedding_types=binary packs 8 values per byte",
                                                      "embedding_types")
    assert errors.surface_param(output, "/v1/embeddings")[1] == "encoding_format"
    # a key the surface does not rename, a message that does not start with the key, no field at all
    assert errors.surface_param(InvalidBudget("layer=9 must be", field="layer"), "/tei") == ("layer=9 must be", "layer")
    assert errors.surface_param(InvalidRequest("inputs must not be empty", field="input"), "/tei") == (
        "inputs must not be empty", "inputs")
    assert errors.surface_param(EngineError("boom"), "/v1/embeddings") == ("boom", None)


def test_every_api_error_class_has_its_row() -> None:
    classes = [c for c in vars(errors).values()
               if isinstance(c, type) and issubclass(c, errors.ApiError) and c is not errors.ApiError]
    assert len(classes) == 6
    for cls in classes:
        row = errors.row_for(cls("m", "c"))
        assert row is not errors._UNKNOWN and 400 <= row.status < 500 and row.tei_status == row.status, cls


def test_routes_raise_no_bare_status() -> None:
    """Every 4xx of the API goes through the table: no route builds an error from a status of its own."""
    for path in (SRC / "service" / "api").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
                name = getattr(node.exc.func, "id", "")
                assert name != "ApiError", f"{path.name}:{node.lineno} raises ApiError itself; use a table class"
                assert name != "HTTPException", f"{path.name}:{node.lineno}"


def test_surface_names_stay_in_the_api() -> None:
    """The engine and the model directory name fields by key; no surface's parameter name reaches them."""
    for package in ("modeldir", "service/engine"):
        for path in (SRC / package).glob("*.py"):
            text = path.read_text()
            for name in ("dimensions", "encoding_format", "embedding_types", "dim_param", "input_param"):
                assert name not in text, f"{path.relative_to(SRC)} mentions {name!r}"


def test_agreed_takes_the_one_value_given() -> None:
    assert agreed("dim", (None, 8, None), "{name}") == 8
    assert agreed("dim", (8, 8, None), "{name}") == 8
    assert agreed("dim", (None, None), "{name}") is None
    with pytest.raises(errors.Conflict) as exc:
        agreed("dim", (16, None, 8), "{name}: {given} / {ordered}")
    assert (exc.value.message, exc.value.code, exc.value.param) == ("dim: [16, 8] / [16, 8]", "conflict", "dim")
    with pytest.raises(errors.Conflict, match=r"^layer given as auto in the query and 2 in the body$"):
        agreed("layer", ("auto", 2), "{name} given as {given[0]} in the query and {given[1]} in the body")
