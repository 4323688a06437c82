"""The engine's error vocabulary; request errors come from the model-directory runner.

The HTTP layer maps each class to a status in one table (api/errors.py)."""

from __future__ import annotations

from mipic.modeldir.errors import EngineError, InputTooLong, InvalidBudget, InvalidRequest

__all__ = [
    "DeadlineExceeded",
    "Draining",
    "EmptyInput",
    "EngineError",
    "InferenceFailed",
    "InputTooLong",
    "InvalidBudget",
    "InvalidRequest",
    "ModelNotFound",
    "ModelRejected",
    "NotReady",
    "Overloaded",
    "PointerInvalid",
]


class EmptyInput(InvalidRequest):
    """No inputs at all (text-embeddings-inference answers this one apart, as ``Empty``)."""


class ModelNotFound(EngineError):
    code = "model_not_found"


class ModelRejected(EngineError):
    """A model version failed verification (schema, checksums, golden parity); the served one stays."""

    code = "model_rejected"


class PointerInvalid(EngineError):
    """The repository's CURRENT pointer cannot be followed (missing, empty, not UTF-8, invalid or unknown
    version, too large); the served version stays."""

    code = "invalid_pointer"


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
