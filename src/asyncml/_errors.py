"""asyncml's errors: one small tree under :class:`AsyncmlError`.

::

    AsyncmlError
    ├── ModelError          predict() failed for this item (the cause is attached)
    │   └── OutputMismatch  predict() broke the contract: not one output per input
    ├── SetupError          a worker's setup() or warmup() failed; the model never started
    ├── WorkerCrashed       the item kept killing its worker process; it failed alone
    ├── ItemTimeout         the item's deadline passed (also a builtin ``TimeoutError``)
    ├── Overloaded          the admission queue was full and the caller chose not to wait
    └── Closed              the model was closed before the item could run

Every error pickles with its context (``model``, ``index``), because errors cross process
and Ray boundaries. The original exception of a :class:`ModelError` travels as ``cause``
when it pickles itself, and always as text (``cause_type``, ``cause_message``).
"""

from __future__ import annotations

import pickle
from typing import Any


class AsyncmlError(Exception):
    """Base class of every error asyncml raises.

    Attributes:
        model: name of the model the error concerns, if any.
        index: position of the item in the caller's input (``map``, ``as_completed``),
            or ``None`` for a single call.
    """

    def __init__(self, message: str, *, model: str | None = None, index: int | None = None):
        super().__init__(message)
        self.message = message
        self.model = model
        self.index = index

    def _context(self) -> dict[str, Any]:
        return {"model": self.model, "index": self.index}

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.message, self._context()))

    def __str__(self) -> str:
        if self.index is None:
            return self.message
        return f"{self.message} (item {self.index})"


def _rebuild(cls: type[AsyncmlError], message: str, context: dict[str, Any]) -> AsyncmlError:
    return cls(message, **context)


class ModelError(AsyncmlError):
    """The model's ``predict()`` raised for this item (other items of its batch succeeded).

    Attributes:
        cause: the original exception, when it could be carried (it is also ``__cause__``).
        cause_type: the original exception's qualified type name.
        cause_message: the original exception's message.
    """

    def __init__(
        self,
        message: str,
        *,
        model: str | None = None,
        index: int | None = None,
        cause: BaseException | None = None,
        cause_type: str | None = None,
        cause_message: str | None = None,
    ):
        super().__init__(message, model=model, index=index)
        self.cause = cause
        self.cause_type = cause_type or (type(cause).__qualname__ if cause is not None else None)
        self.cause_message = cause_message or (str(cause) if cause is not None else None)
        if cause is not None:
            self.__cause__ = cause

    @classmethod
    def from_exception(cls, exc: BaseException, *, model: str) -> ModelError:
        """Wraps an exception raised by a model's code."""
        return cls(f"model {model!r} failed: {type(exc).__name__}: {exc}", model=model, cause=exc)

    def _context(self) -> dict[str, Any]:
        return {
            **super()._context(),
            "cause": self.cause if round_trips(self.cause) else None,
            "cause_type": self.cause_type,
            "cause_message": self.cause_message,
        }


class OutputMismatch(ModelError):
    """``predict()`` did not return exactly one output per input of its batch."""


class SetupError(AsyncmlError):
    """A worker could not start the model: its ``setup()`` or ``warmup()`` raised.

    Attributes:
        worker: index of the worker that failed.
    """

    def __init__(
        self,
        message: str,
        *,
        model: str | None = None,
        index: int | None = None,
        worker: int | None = None,
    ):
        super().__init__(message, model=model, index=index)
        self.worker = worker

    def _context(self) -> dict[str, Any]:
        return {**super()._context(), "worker": self.worker}


class WorkerCrashed(AsyncmlError):
    """The worker process running this item died (a signal, ``os._exit``, the OOM killer, or
    a hung batch killed after its execution timeout), on every one of its attempts.

    Batches whose worker dies are retried on a healthy worker and split until the item that
    kills workers stands alone, so this error reaches only that item.

    Attributes:
        reason: how the worker died, e.g. ``"killed by SIGSEGV"`` or ``"exit code 3"``.
        attempts: how many times the item was run.
    """

    def __init__(
        self,
        message: str,
        *,
        model: str | None = None,
        index: int | None = None,
        reason: str | None = None,
        attempts: int | None = None,
    ):
        super().__init__(message, model=model, index=index)
        self.reason = reason
        self.attempts = attempts

    def _context(self) -> dict[str, Any]:
        return {**super()._context(), "reason": self.reason, "attempts": self.attempts}


class ItemTimeout(AsyncmlError, TimeoutError):
    """The item's deadline passed before its result was ready.

    An item whose deadline passes while it is still queued is never computed.
    """


class Overloaded(AsyncmlError):
    """The model's admission queue is full (raised by the ``*_nowait`` calls)."""


class Closed(AsyncmlError):
    """The model was closed (or is closing) before this item could run."""


def round_trips(obj: object) -> bool:
    """Whether ``obj`` survives a pickle round trip: an exception whose ``__init__`` takes
    other arguments than its ``args`` pickles, but does not unpickle."""
    if obj is None:
        return True
    try:
        pickle.loads(pickle.dumps(obj))
    except Exception:
        return False
    return True
