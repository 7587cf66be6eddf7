"""HTTP errors as values: the status, a machine-readable type and a one-line message.

Every error response has the same JSON body, ``{"error": message, "type": type}`` plus
``"field"`` for validation errors and ``"stage"`` for a pipeline stage's error: the Open
Inference Protocol's ``{"error": message}`` with more keys. No response ever carries a
traceback.
"""

from __future__ import annotations

import math

import orjson

from .._errors import (
    AsyncmlError,
    Closed,
    ItemTimeout,
    ModelError,
    Overloaded,
    SetupError,
    WorkerCrashed,
)
from ..pipeline import StageError

Headers = list[tuple[bytes, bytes]]


class Problem(Exception):
    """An error the server answers with, instead of a result.

    Attributes:
        status: the HTTP status code.
        type: a short machine-readable name, e.g. ``"validation_error"``.
        message: one line for people.
        field: the request field at fault (validation errors), dotted, e.g. ``"inputs.0.shape"``.
        stage: the pipeline stage where the item failed.
        headers: extra response headers, e.g. ``Retry-After``.
    """

    def __init__(
        self,
        status: int,
        type: str,
        message: str,
        *,
        field: str | None = None,
        stage: str | None = None,
        headers: Headers | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.type = type
        self.message = message
        self.field = field
        self.stage = stage
        self.headers: Headers = headers or []

    def body(self) -> bytes:
        """The JSON response body."""
        payload: dict[str, str] = {"error": self.message, "type": self.type}
        if self.field is not None:
            payload["field"] = self.field
        if self.stage is not None:
            payload["stage"] = self.stage
        return orjson.dumps(payload)


class ClientGone(Exception):
    """The client disconnected: there is no one left to answer."""


def invalid(field: str, reason: str) -> Problem:
    """A 422 naming the field at fault and why."""
    return Problem(422, "validation_error", f"{field}: {reason}", field=field)


def retry_after(seconds: float) -> Headers:
    """A ``Retry-After`` header (whole seconds, at least 1)."""
    return [(b"retry-after", str(max(1, math.ceil(seconds))).encode())]


def from_error(error: AsyncmlError, *, retry_seconds: float) -> Problem:
    """The response for an item's error (its message includes the item's index, if any)."""
    message = str(error)
    if isinstance(error, Overloaded):
        return Problem(503, "overloaded", message, headers=retry_after(retry_seconds))
    if isinstance(error, ItemTimeout):
        return Problem(504, "deadline_exceeded", message)
    if isinstance(error, Closed | SetupError):
        return Problem(503, "unavailable", message, headers=retry_after(retry_seconds))
    if isinstance(error, StageError):
        if error.cause_type == SetupError.__qualname__:  # the stage has no worker left
            headers = retry_after(retry_seconds)
            return Problem(503, "unavailable", message, stage=error.stage, headers=headers)
        return Problem(500, "stage_error", message, stage=error.stage)
    if isinstance(error, WorkerCrashed):
        return Problem(500, "worker_crashed", message)
    if isinstance(error, ModelError):
        return Problem(500, "model_error", message)
    return Problem(500, "error", message)
