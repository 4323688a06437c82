"""One table from errors to HTTP status, and OpenAI-style error bodies. No internal text leaks on 5xx."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Scope

from mipic.service.api.embedding import ClientGone
from mipic.service.engine import errors as engine_errors

logger = logging.getLogger(__name__)


class ApiError(Exception):
    """An HTTP-level error raised by the API layer itself (auth, content type, size, model name)."""

    def __init__(self, status: int, message: str, code: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param


# engine error → (HTTP status, OpenAI error type). The first matching class wins (subclasses first).
ERROR_TABLE: list[tuple[type[engine_errors.EngineError], int, str]] = [
    (engine_errors.InvalidBudget, 400, "invalid_request_error"),
    (engine_errors.InputTooLong, 400, "invalid_request_error"),
    (engine_errors.InvalidRequest, 400, "invalid_request_error"),
    (engine_errors.ModelNotFound, 404, "invalid_request_error"),
    (engine_errors.ModelRejected, 409, "invalid_request_error"),
    (engine_errors.PointerInvalid, 409, "invalid_request_error"),
    (engine_errors.Overloaded, 429, "rate_limit_error"),
    (engine_errors.NotReady, 503, "service_unavailable"),
    (engine_errors.Draining, 503, "service_unavailable"),
    (engine_errors.DeadlineExceeded, 504, "timeout"),
    (engine_errors.InferenceFailed, 500, "server_error"),
]

RETRY_AFTER_STATUSES = {429, 503}
HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}


def status_for(exc: engine_errors.EngineError) -> tuple[int, str]:
    for cls, status, kind in ERROR_TABLE:
        if isinstance(exc, cls):
            return status, kind
    return 500, "server_error"


def error_body(message: str, kind: str, code: str | None, param: str | None) -> dict[str, object]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


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
    def respond(request: Request, status: int, message: str, kind: str, code: str, param: str | None) -> JSONResponse:
        count_error(request.scope, code)
        return error_response(status, message, kind, code, param, retry_after)

    @app.exception_handler(engine_errors.EngineError)
    async def _engine(request: Request, exc: engine_errors.EngineError) -> JSONResponse:
        status, kind = status_for(exc)
        message = exc.message if status < 500 or status in (503, 504) else "internal error running the model"
        return respond(request, status, message, kind, exc.code, exc.param)

    @app.exception_handler(ApiError)
    async def _api(request: Request, exc: ApiError) -> JSONResponse:
        return respond(request, exc.status, exc.message, _kind_for_status(exc.status), exc.code, exc.param)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errs = exc.errors()
        # For a union (str | list[str]) the deepest location is the most specific complaint.
        first: dict[str, Any] = dict(max(errs, key=lambda e: len(e.get("loc", ())), default={}))
        if first.get("type") == "json_invalid":
            return respond(request, 400, "request body is not valid JSON", "invalid_request_error",
                           "invalid_json", None)
        param = _validation_param(tuple(first.get("loc", ())))
        # pydantic's message only, never the input value (it may be huge or sensitive)
        message = f"{param or 'body'}: {first.get('msg', 'invalid value')}"
        return respond(request, 400, message, "invalid_request_error", "invalid_value", param)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = str(exc.detail) if exc.status_code < 500 else "internal error"
        return respond(request, exc.status_code, message, _kind_for_status(exc.status_code),
                       HTTP_CODES.get(exc.status_code, f"http_{exc.status_code}"), None)

    @app.exception_handler(ClientGone)
    async def _gone(_: Request, exc: ClientGone) -> Response:
        # Nobody is listening; 499 (nginx's "client closed request") only reaches logs and metrics.
        return Response(status_code=499)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error", exc_info=exc)
        return respond(request, 500, "internal error", "server_error", "internal_error", None)
