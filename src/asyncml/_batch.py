"""Running one batch where the model lives, with each failing item isolated.

This runs inside a worker (a thread today; a process or a Ray actor tomorrow), so everything
it returns pickles. When ``predict`` raises for a batch, the batch is split in halves and each
half re-run, until the failing items stand alone: they get their own :class:`ModelError`
and every other item still gets its result. A batch of ``n`` items with one bad item costs
about ``2 * log2(n)`` extra calls, paid only when something fails.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._errors import AsyncmlError, ModelError, OutputMismatch
from ._model import Model, ModelSpec, split_outputs


@dataclass(slots=True)
class BatchOutcome:
    """Per-item outcomes of one batch: ``values[i]``, or ``errors[i]`` where it failed."""

    values: Sequence[Any]
    errors: dict[int, AsyncmlError] | None = None

    @classmethod
    def failure(cls, size: int, error: AsyncmlError) -> BatchOutcome:
        """Every item of the batch failed with (a copy of) ``error``."""
        return cls([None] * size, {i: _copy(error) for i in range(size)})


def _copy(error: AsyncmlError) -> AsyncmlError:
    # Each item owns its error, so that map() can set the item's index on it.
    reduced = error.__reduce__()
    clone: AsyncmlError = reduced[0](*reduced[1])
    clone.__cause__ = error.__cause__
    return clone


class BatchRun:
    """The bisection plan for one batch: which part to run next, and what came of it."""

    __slots__ = ("_errors", "_items", "_pending", "_spec", "_values")

    def __init__(self, spec: ModelSpec, items: Sequence[Any]):
        self._spec = spec
        self._items = items
        self._pending: list[tuple[int, int]] = [(0, len(items))]
        self._values: Sequence[Any] | list[Any] = ()
        self._errors: dict[int, AsyncmlError] = {}

    def next_part(self) -> tuple[int, int] | None:
        """The next ``(start, stop)`` slice to run, or ``None`` when the batch is done."""
        return self._pending.pop() if self._pending else None

    def inputs(self, part: tuple[int, int]) -> Any:
        """The collated inputs of ``part`` (may raise: a bad item can break collation)."""
        start, stop = part
        items = self._items if stop - start == len(self._items) else self._items[start:stop]
        if self._spec.collate == "stack":
            return stack(items)
        return items if isinstance(items, list) else list(items)

    def succeeded(self, part: tuple[int, int], outputs: Any) -> None:
        start, stop = part
        try:
            values = split_outputs(outputs, stop - start)
        except ValueError as exc:
            name = self._spec.name
            message = f"model {name!r} {exc}; predict() must return one output per input"
            for i in range(start, stop):
                self._errors[i] = OutputMismatch(message, model=name)
            return
        if stop - start == len(self._items):
            self._values = values
            return
        self._materialise()
        self._values[start:stop] = values  # type: ignore[index]

    def failed(self, part: tuple[int, int], exc: Exception) -> None:
        start, stop = part
        if stop - start <= 1:  # one item (or none: nothing to split)
            if stop > start:
                self._errors[start] = ModelError.from_exception(exc, model=self._spec.name)
            return
        middle = (start + stop) // 2
        self._pending.append((middle, stop))
        self._pending.append((start, middle))  # runs first: items keep their order

    def outcome(self) -> BatchOutcome:
        self._materialise()
        return BatchOutcome(self._values, self._errors or None)

    def _materialise(self) -> None:
        if len(self._values) != len(self._items):
            self._values = [None] * len(self._items)


def stack(items: Sequence[Any] | np.ndarray) -> Any:
    """``numpy.stack(items)``, three times faster for the usual arrays of one shape and dtype,
    and free for items that already are one array (a batch from a worker process)."""
    if isinstance(items, np.ndarray):
        # Read-only arrays (e.g. from Ray's object store) are copied, as stacking would.
        return items if items.flags.writeable else items.copy()
    uniform = stack_uniform(items)
    return np.stack(items) if uniform is None else uniform


def stack_uniform(items: Sequence[Any]) -> np.ndarray | None:
    """``items`` as one array if they are plain arrays of one shape and dtype, else None."""
    first = items[0] if len(items) else None
    if not isinstance(first, np.ndarray) or not first.ndim:
        return None
    shape, dtype = first.shape, first.dtype
    if all(
        type(item) is np.ndarray and item.shape == shape and item.dtype == dtype for item in items
    ):
        return np.concatenate(items).reshape((len(items), *shape))
    return None


def run_batch(model: Model[Any, Any], spec: ModelSpec, items: Sequence[Any]) -> BatchOutcome:
    """Runs ``items`` through a synchronous ``model.predict``, isolating failing items."""
    run = BatchRun(spec, items)
    while (part := run.next_part()) is not None:
        try:
            outputs = model.predict(run.inputs(part))
        except Exception as exc:
            run.failed(part, exc)
        else:
            run.succeeded(part, outputs)
    return run.outcome()


async def arun_batch(model: Model[Any, Any], spec: ModelSpec, items: Sequence[Any]) -> BatchOutcome:
    """Runs ``items`` through an ``async def predict``, isolating failing items."""
    run = BatchRun(spec, items)
    while (part := run.next_part()) is not None:
        try:
            outputs = await model.predict(run.inputs(part))
        except Exception as exc:
            run.failed(part, exc)
        else:
            run.succeeded(part, outputs)
    return run.outcome()
