"""Items that failed for good: dead letters, where they go, and when the run gives up."""

from __future__ import annotations

import asyncio
import traceback as traceback_module
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import orjson

from .._errors import AsyncmlError, ModelError, round_trips

#: Dead letters a summary keeps for inspection; all of them reach the sink.
KEPT_IN_SUMMARY = 100
_JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


@dataclass(frozen=True)
class DeadLetter:
    """An item that failed at a stage after all its attempts.

    Attributes:
        index: position of the source item it came from.
        stage: name of the stage where it failed.
        item: the stage's input that failed.
        error_type: the exception's type name (the original one for model errors).
        message: the exception's message.
        traceback: the formatted traceback, where one was available.
        attempts: how many times the stage tried it.
    """

    index: int
    stage: str
    item: Any
    error_type: str
    message: str
    traceback: str
    attempts: int

    @classmethod
    def of(
        cls, index: int, stage: str, item: Any, error: BaseException, attempts: int
    ) -> DeadLetter:
        error_type, message = type(error).__qualname__, str(error)
        if isinstance(error, ModelError) and error.cause_type is not None:
            error_type, message = error.cause_type, error.cause_message or ""
        cause = error.cause if isinstance(error, ModelError) else error
        trace = ""
        if cause is not None and cause.__traceback__ is not None:
            trace = "".join(traceback_module.format_exception(cause))
        return cls(index, stage, item, error_type, message, trace, attempts)

    def to_json(self) -> bytes:
        """One JSON line; an item JSON cannot hold is written as its ``repr``."""
        record = {name: getattr(self, name) for name in _FIELDS}  # no deep copy of the item
        try:
            return orjson.dumps(record, default=repr, option=_JSON_OPTIONS)
        except TypeError:  # e.g. an int past 64 bits somewhere inside the item
            record["item"] = repr(self.item)
            return orjson.dumps(record, default=repr, option=_JSON_OPTIONS)

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # Crossing to another process (in a PipelineFailed, say), an item that does not
        # pickle (a lock, a generator) travels as its repr.
        values = [getattr(self, name) for name in _FIELDS]
        if not round_trips(self.item):
            values[_FIELDS.index("item")] = repr(self.item)
        return type(self), tuple(values)


_FIELDS = tuple(field.name for field in fields(DeadLetter))


class StageError(ModelError):
    """An item failed for good at a pipeline stage (raised by a :class:`PipelineService`).

    Attributes:
        stage: the stage's name (also ``model``).
        attempts: how many times the stage tried the item.
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
        attempts: int | None = None,
    ):
        super().__init__(
            message,
            model=model,
            index=index,
            cause=cause,
            cause_type=cause_type,
            cause_message=cause_message,
        )
        self.attempts = attempts

    @property
    def stage(self) -> str | None:
        return self.model

    @classmethod
    def of(cls, letter: DeadLetter) -> StageError:
        return cls(
            f"stage {letter.stage!r} failed after {letter.attempts} attempt(s): "
            f"{letter.error_type}: {letter.message}",
            model=letter.stage,
            cause_type=letter.error_type,
            cause_message=letter.message,
            attempts=letter.attempts,
        )

    def _context(self) -> dict[str, Any]:
        return {**super()._context(), "attempts": self.attempts}


class PipelineFailed(AsyncmlError):
    """The pipeline stopped before its end: more items failed than ``max_failures``
    allows, the source raised, or a part of the run itself broke (its error is the
    ``__cause__``; items' own errors never do that: they go to the dead letters).

    Attributes:
        failed: items that had failed when it stopped.
        last: the dead letter that crossed the threshold (None for the other causes).
    """

    def __init__(
        self,
        message: str,
        *,
        model: str | None = None,
        index: int | None = None,
        failed: int = 0,
        last: DeadLetter | None = None,
    ):
        super().__init__(message, model=model, index=index)
        self.failed = failed
        self.last = last

    def _context(self) -> dict[str, Any]:
        return {**super()._context(), "failed": self.failed, "last": self.last}


class FailureLimit:
    """``max_failures``: a count, or a fraction of the items finished so far.

    A fraction is judged over at least ``min_items`` items, so that one early failure does
    not stop a run that is 99.9% healthy.
    """

    def __init__(self, limit: int | float | None, *, min_items: int = 100):
        if limit is not None and (isinstance(limit, bool) or limit < 0):
            raise ValueError(f"max_failures must be a count or a fraction >= 0, got {limit!r}")
        if isinstance(limit, float) and limit >= 1:
            raise ValueError(f"a fraction max_failures must be below 1, got {limit!r}")
        self._limit = limit
        self._min_items = min_items

    def exceeded(self, failed: int, finished: int) -> bool:
        if self._limit is None:
            return False
        if isinstance(self._limit, float):
            return failed > self._limit * max(finished, self._min_items)
        return failed > self._limit

    def __str__(self) -> str:
        return f"max_failures={self._limit}"


DeadLetterSink = Callable[[DeadLetter], Any]


class JsonlDeadLetters:
    """Appends dead letters to a JSON Lines file, written by a thread, never the loop."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._pending: list[bytes] = []

    def __call__(self, letter: DeadLetter) -> None:
        self._pending.append(letter.to_json() + b"\n")

    async def flush(self) -> None:
        if self._pending:
            lines, self._pending = self._pending, []
            await asyncio.to_thread(self._append, lines)

    def _append(self, lines: list[bytes]) -> None:
        with self.path.open("ab") as file:
            file.writelines(lines)
