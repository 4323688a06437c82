"""Errors a model directory's runner raises about a request. The HTTP layer maps each class to a status
in one table (``service/api/errors.py``); the service adds its own (overload, draining, ...) below
:class:`EngineError`."""

from __future__ import annotations


class EngineError(Exception):
    """Base class. ``code`` is stable and reaches clients; ``param`` names the offending field."""

    code = "engine_error"

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class InvalidRequest(EngineError):
    code = "invalid_request"


class InvalidBudget(InvalidRequest):
    code = "invalid_budget"


class InputTooLong(InvalidRequest):
    code = "input_too_long"
