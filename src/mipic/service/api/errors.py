"""One table from errors to HTTP status, and the error bodies of each surface. No internal text leaks on 5xx.

Two shapes, chosen by the route's surface: OpenAI's ``{"error": {"message", "type", "param", "code"}}``
everywhere except under ``/tei``, where text-embeddings-inference's ``{"error": "...", "error_type": "..."}``
is used, with TEI's statuses for its error types (a request that does not validate is 422 there, as
in TEI; 400 elsewhere). The engine names a field by its key (``dim``); the param and the message say the
surface's name for it (``dimensions`` under ``/v1``), from :data:`SURFACE_FIELDS`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Scope

from mipic.service.engine import errors as engine_errors

logger = logging.getLogger(__name__)

TEI_PREFIX = "/tei"


class ApiError(Exception):
    """An error the API layer finds itself, before the engine; its class's row in :data:`ERROR_TABLE` gives the
    status. ``param``: the offending parameter, as this surface names it."""

    def __init__(self, message: str, code: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message, self.code, self.param = message, code, param


class Conflict(ApiError):
    """One field given twice (query and body, or TEI's ``dim`` and ``dimensions``) with different values."""


class Unauthorized(ApiError):
    """No credentials, or a wrong API key."""


class Forbidden(ApiError):
    """Credentials that do not open this endpoint (admin)."""


class NotFound(ApiError):
    """A named thing this server does not have (a UI file)."""


class SingleWorkerOnly(ApiError):
    """A request one worker of several cannot apply to the others (a reload to a given ``model_dir``)."""


class UnsupportedMediaType(ApiError):
    """A body that is not JSON."""


class ClientGone(Exception):
    """The client disconnected before its embeddings were ready."""


@dataclass(frozen=True)
class ErrorRow:
    """How one error reaches a client: status and OpenAI type; TEI's error type and status."""

    exc: type[engine_errors.EngineError] | type[ApiError]
    status: int
    kind: str
    tei_type: str
    tei_status: int


# The first matching class wins (subclasses first). TEI's types: Validation/Tokenizer 422, Empty 400,
# Overloaded 429, Unhealthy 503, Backend (TEI: 424; here 500, a model failure is not the client's).
ERROR_TABLE: list[ErrorRow] = [
    ErrorRow(engine_errors.InvalidBudget, 400, "invalid_request_error", "Validation", 422),
    ErrorRow(engine_errors.InputTooLong, 400, "invalid_request_error", "Validation", 422),
    ErrorRow(engine_errors.EmptyInput, 400, "invalid_request_error", "Empty", 400),
    ErrorRow(engine_errors.InvalidRequest, 400, "invalid_request_error", "Validation", 422),
    ErrorRow(Conflict, 400, "invalid_request_error", "Validation", 400),
    ErrorRow(Unauthorized, 401, "authentication_error", "Validation", 401),
    ErrorRow(Forbidden, 403, "authentication_error", "Validation", 403),
    ErrorRow(engine_errors.ModelNotFound, 404, "invalid_request_error", "Validation", 404),
    ErrorRow(NotFound, 404, "invalid_request_error", "Validation", 404),
    ErrorRow(engine_errors.ModelRejected, 409, "invalid_request_error", "Backend", 409),
    ErrorRow(engine_errors.PointerInvalid, 409, "invalid_request_error", "Backend", 409),
    ErrorRow(SingleWorkerOnly, 409, "invalid_request_error", "Validation", 409),
    ErrorRow(UnsupportedMediaType, 415, "invalid_request_error", "Validation", 415),
    ErrorRow(engine_errors.Overloaded, 429, "rate_limit_error", "Overloaded", 429),
    ErrorRow(engine_errors.NotReady, 503, "service_unavailable", "Unhealthy", 503),
    ErrorRow(engine_errors.Draining, 503, "service_unavailable", "Unhealthy", 503),
    ErrorRow(engine_errors.DeadlineExceeded, 504, "timeout", "Overloaded", 504),
    ErrorRow(engine_errors.InferenceFailed, 500, "server_error", "Backend", 500),
]
_UNKNOWN = ErrorRow(engine_errors.EngineError, 500, "server_error", "Backend", 500)

# Each surface's parameter names for the field keys of the engine's errors (``EngineError.field``), by path
# prefix; a key a surface does not list is its own name (layer, min_layer, max_layer, max_latency_ms, ids).
SURFACE_FIELDS: dict[str, dict[str, str]] = {
    "/embed": {"dim": "dim", "output": "embedding_types", "input": "inputs"},
    "/v1": {"dim": "dimensions", "output": "encoding_format", "input": "input"},
    TEI_PREFIX: {"dim": "dimensions", "input": "inputs"},
}

RETRY_AFTER_STATUSES = {429, 503}
HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}


def row_for(exc: engine_errors.EngineError | ApiError) -> ErrorRow:
    return next((row for row in ERROR_TABLE if isinstance(exc, row.exc)), _UNKNOWN)


def status_for(exc: engine_errors.EngineError | ApiError) -> tuple[int, str]:
    row = row_for(exc)
    return row.status, row.kind


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + "/")


def is_tei_path(path: str) -> bool:
    return _under(path, TEI_PREFIX)


def surface_param(exc: engine_errors.EngineError, path: str) -> tuple[str, str | None]:
    """(message, param) of an engine error on ``path``'s surface: the field's key (``dim`` in ``dim=12 is not
    served``, ``input`` in ``input[3]``) replaced by the surface's name for it, in the param and where the message
    starts with it."""
    field = exc.field
    if field is None:
        return exc.message, None
    key = field.partition("[")[0]
    names = next((n for prefix, n in SURFACE_FIELDS.items() if _under(path, prefix)), {})
    param = names.get(key, key) + field[len(key):]
    rest = exc.message[len(field):]
    if exc.message.startswith(field) and not (rest[:1].isalnum() or rest[:1] == "_"):
        return param + rest, param
    return exc.message, param


def error_body(message: str, kind: str, code: str | None, param: str | None) -> dict[str, object]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def tei_error_body(message: str, tei_type: str) -> dict[str, object]:
    return {"error": message, "error_type": tei_type}


def body_for_path(path: str, status: int, message: str, kind: str, code: str | None,
                  param: str | None) -> dict[str, object]:
    """The error body in the shape of ``path``'s surface (for errors raised outside a route, e.g. 413)."""
    if is_tei_path(path):
        return tei_error_body(message, _tei_type_for_status(status))
    return error_body(message, kind, code, param)


def error_response(
    status: int, message: str, kind: str, code: str | None, param: str | None, retry_after: int
) -> JSONResponse:
    headers = {"Retry-After": str(retry_after)} if status in RETRY_AFTER_STATUSES else None
    return JSONResponse(error_body(message, kind, code, param), status_code=status, headers=headers)


OTHER_ENDPOINT = "other"


def endpoint_label(scope: Scope) -> str:
    """The route's path (bounded by the app's routes), or ``other`` for paths that match none."""
    route = scope.get("route")
    if route is not None and isinstance(getattr(route, "path", None), str):
        return str(route.path)
    path = scope.get("path", "")
    known: frozenset[str] = getattr(getattr(scope.get("app"), "state", None), "endpoints", frozenset())
    return str(path) if path in known else OTHER_ENDPOINT


def count_error(scope: Scope, code: str) -> None:
    """One ``mipic_errors_total{endpoint, code}`` increment per error response."""
    app = scope.get("app")
    metrics = getattr(getattr(app, "state", None), "metrics", None)
    if metrics is not None:
        metrics.errors.labels(endpoint_label(scope), code).inc()


def _respond(request: Request, status: int, message: str, kind: str, code: str | None, param: str | None,
             retry_after: int, tei: tuple[str, int] | None = None) -> JSONResponse:
    """OpenAI's shape, or TEI's under /tei (``tei`` = (error_type, status); default: from the status). Every
    error response is counted once in ``mipic_errors_total{endpoint, code}``."""
    count_error(request.scope, code or "unknown")
    if not is_tei_path(request.url.path):
        return error_response(status, message, kind, code, param, retry_after)
    tei_type, tei_status = tei or (_tei_type_for_status(status), status)
    headers = {"Retry-After": str(retry_after)} if tei_status in RETRY_AFTER_STATUSES else None
    return JSONResponse(tei_error_body(message, tei_type), status_code=tei_status, headers=headers)


def _tei_type_for_status(status: int) -> str:
    if status == 429:
        return "Overloaded"
    if status == 503:
        return "Unhealthy"
    return "Validation" if status < 500 else "Backend"


def _kind_for_status(status: int) -> str:
    if status in (401, 403):
        return "authentication_error"
    if status == 429:
        return "rate_limit_error"
    return "invalid_request_error" if status < 500 else "server_error"


def _validation_param(loc: tuple[int | str, ...]) -> str | None:
    """('body', 'inputs', 'list[str]', 3) → 'inputs[3]': drop the location root and union-branch tags."""
    out = ""
    for part in loc[1:] if loc and loc[0] in ("body", "query") else loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif "[" in part or part in ("str", "int", "float", "bool"):
            continue
        else:
            out += f".{part}" if out else part
    return out or None


def install_error_handlers(app: FastAPI, retry_after: int) -> None:
    @app.exception_handler(engine_errors.EngineError)
    async def _engine(request: Request, exc: engine_errors.EngineError) -> JSONResponse:
        row = row_for(exc)
        message, param = surface_param(exc, request.url.path)
        if row.status >= 500 and row.status not in (503, 504):
            message = "internal error running the model"
        return _respond(request, row.status, message, row.kind, exc.code, param, retry_after,
                        (row.tei_type, row.tei_status))

    @app.exception_handler(ApiError)
    async def _api(request: Request, exc: ApiError) -> JSONResponse:
        row = row_for(exc)
        return _respond(request, row.status, exc.message, row.kind, exc.code, exc.param, retry_after,
                        (row.tei_type, row.tei_status))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errs = exc.errors()
        # For a union (str | list[str]) the deepest location is the most specific complaint.
        first: dict[str, Any] = dict(max(errs, key=lambda e: len(e.get("loc", ())), default={}))
        if first.get("type") == "json_invalid":
            return _respond(request, 400, "request body is not valid JSON", "invalid_request_error",
                            "invalid_json", None, retry_after, ("Validation", 400))
        param = _validation_param(tuple(first.get("loc", ())))
        # pydantic's message only, never the input value (it may be huge or sensitive)
        message = f"{param or 'body'}: {first.get('msg', 'invalid value')}"
        return _respond(request, 400, message, "invalid_request_error", "invalid_value", param, retry_after,
                        ("Validation", 422))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = str(exc.detail) if exc.status_code < 500 else "internal error"
        return _respond(request, exc.status_code, message, _kind_for_status(exc.status_code),
                        HTTP_CODES.get(exc.status_code, f"http_{exc.status_code}"), None, retry_after)

    @app.exception_handler(ClientGone)
    async def _gone(_: Request, exc: ClientGone) -> Response:
        # Nobody is listening; 499 (nginx's "client closed request") only reaches logs and metrics.
        return Response(status_code=499)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error", exc_info=exc)
        return _respond(request, 500, "internal error", "server_error", "internal_error", None, retry_after)
