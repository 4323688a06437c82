"""The engine's error vocabulary. The HTTP layer maps each class to a status in one table (api/errors.py)."""

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


class ModelNotFound(EngineError):
    code = "model_not_found"


class ModelRejected(EngineError):
    """A model version failed verification (schema, checksums, golden parity); the served one stays."""

    code = "model_rejected"


class Overloaded(EngineError):
    code = "overloaded"


class DeadlineExceeded(EngineError):
    code = "deadline_exceeded"


class NotReady(EngineError):
    code = "not_ready"


class Draining(EngineError):
    code = "draining"


class InferenceFailed(EngineError):
    """The model raised while running a batch; only that batch's requests get it."""

    code = "inference_failed"
