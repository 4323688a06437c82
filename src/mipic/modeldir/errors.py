"""Errors a model directory's runner raises about a request. The HTTP layer maps each class to a status
in one table (``service/api/errors.py``); the service adds its own (overload, draining, ...) below
:class:`EngineError`."""

from __future__ import annotations


class EngineError(Exception):
    """Base class. ``code`` is stable and reaches clients.

    ``field`` names the offending request field by its key (``dim``, ``layer``, ``output``, ``input[3]``, ``ids``)
    and the message starts with it; each surface of the HTTP layer puts its own parameter name for the key in both
    (``service/api/errors.py``), so no surface's names reach this module.
    """

    code = "engine_error"

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class InvalidRequest(EngineError):
    code = "invalid_request"


class InvalidBudget(InvalidRequest):
    code = "invalid_budget"


class InputTooLong(InvalidRequest):
    code = "input_too_long"
