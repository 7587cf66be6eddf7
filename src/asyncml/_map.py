"""``asyncml.map(fn, items)``: ``Pool.map`` made safe, for plain one-item functions.

``fn`` runs on the chosen executor (processes by default) with the same crash semantics as
any model: a worker that dies is replaced and only the item that kills workers fails.
Items are pulled from ``items`` as results are taken, so an endless generator is fine, and
results stream in input order (or as they complete).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncGenerator, Callable, Generator, Iterable
from typing import Any, Generic, Literal, TypeVar, overload

from ._errors import AsyncmlError
from ._loaded import DEFAULT_MAX_QUEUE, ExecutorName, abandon, load
from ._per_item import PerItem, unwrap_failure
from .executors import Executor

T = TypeVar("T")
R = TypeVar("R")


class MapRun(Generic[R]):
    """The results of :func:`map`: ``await`` it for a list, or ``async for`` over it."""

    def __init__(
        self,
        fn: Callable[[Any], R],
        items: Iterable[Any],
        *,
        executor: ExecutorName | Executor,
        workers: int | None,
        chunk_size: int,
        ordered: bool,
        max_in_flight: int | None,
        return_exceptions: bool,
    ):
        self._name = getattr(fn, "__name__", type(fn).__name__)
        self._batch_fn = PerItem(fn, self._name)
        self._items = items
        self._executor = executor
        self._workers = workers
        self._chunk_size = chunk_size
        self._ordered = ordered
        self._max_in_flight = max_in_flight
        self._return_exceptions = return_exceptions

    def __await__(self) -> Generator[Any, None, list[R]]:
        return self._collect().__await__()

    async def _collect(self) -> list[R]:
        return [result async for result in self]

    async def __aiter__(self) -> AsyncGenerator[R, None]:
        window = self._max_in_flight or DEFAULT_MAX_QUEUE
        model = load(
            self._batch_fn,
            executor=self._executor,
            workers=self._workers,
            max_batch_size=self._chunk_size,
            max_queue=window,
            name=self._name,
        )
        async with model:
            if not self._ordered:
                completed = model.as_completed(self._items, return_exceptions=True)
                async with contextlib.aclosing(completed):
                    async for index, result in completed:
                        yield self._outcome(index, result)
                return
            # In order: the oldest item is awaited before more are taken, so at most
            # ``window`` are ever in flight, and never more than the queue holds.
            pending: deque[tuple[int, asyncio.Future[Any]]] = deque()
            try:
                for index, item in enumerate(self._items):
                    if len(pending) >= window:
                        yield await self._next(pending)
                    pending.append((index, model.call_nowait(item)))
                while pending:
                    yield await self._next(pending)
            finally:
                abandon(future for _, future in pending)  # left early

    async def _next(self, pending: deque[tuple[int, asyncio.Future[Any]]]) -> Any:
        index, future = pending.popleft()
        try:
            result = await future
        except AsyncmlError as error:
            result = error
        return self._outcome(index, result)

    def _outcome(self, index: int, result: Any) -> Any:
        error = unwrap_failure(result)
        if isinstance(error, AsyncmlError):
            error.index = index
            if not self._return_exceptions:
                raise error
            return error
        return result


@overload
def map(
    fn: Callable[[T], R],
    items: Iterable[T],
    /,
    *,
    executor: ExecutorName | Executor = ...,
    workers: int | None = ...,
    chunk_size: int = ...,
    ordered: bool = ...,
    max_in_flight: int | None = ...,
    return_exceptions: Literal[False] = ...,
) -> MapRun[R]: ...


@overload
def map(
    fn: Callable[[T], R],
    items: Iterable[T],
    /,
    *,
    executor: ExecutorName | Executor = ...,
    workers: int | None = ...,
    chunk_size: int = ...,
    ordered: bool = ...,
    max_in_flight: int | None = ...,
    return_exceptions: Literal[True],
) -> MapRun[R | AsyncmlError]: ...


def map(
    fn: Callable[[T], R],
    items: Iterable[T],
    /,
    *,
    executor: ExecutorName | Executor = "process",
    workers: int | None = None,
    chunk_size: int = 1,
    ordered: bool = True,
    max_in_flight: int | None = None,
    return_exceptions: bool = False,
) -> MapRun[R] | MapRun[R | AsyncmlError]:
    """Applies ``fn`` to every item concurrently on workers; await the list or stream it.

    ::

        models = await asyncml.map(train_model, chunks, workers=4)
        async for score in asyncml.map(score_row, rows, chunk_size=64): ...

    Args:
        fn: a function of one item; with processes, defined at module level.
        items: any iterable, even an endless generator: items are pulled as results are
            taken, so at most ``max_in_flight`` are in memory at once.
        executor: ``"process"`` (default: one process per worker, for GIL-bound Python),
            ``"thread"``, or an :class:`~asyncml.executors.Executor`.
        workers: workers (default 1 per the executor; pass ``os.cpu_count()`` to use every
            core).
        chunk_size: items sent to a worker per message: raise it for cheap functions.
        ordered: results in input order (default) or as they complete.
        max_in_flight: items submitted but not yet yielded (default 1024).
        return_exceptions: yield each failed item's error in its place instead of raising.

    Raises:
        ModelError: ``fn`` raised for an item (its ``index`` set); the rest are cancelled.
        WorkerCrashed: an item kept killing its worker process.
    """
    run: MapRun[Any] = MapRun(
        fn,
        items,
        executor=executor,
        workers=workers,
        chunk_size=chunk_size,
        ordered=ordered,
        max_in_flight=max_in_flight,
        return_exceptions=return_exceptions,
    )
    return run
