"""``asyncml.map(fn, items)``: ``Pool.map`` made safe, for plain one-item functions.

``fn`` runs on the chosen executor (processes by default) with the same crash semantics as
any model: a worker that dies is replaced and only the item that kills workers fails.
Items are pulled from ``items`` as results are taken, so an endless generator is fine, and
results stream in input order (or as they complete).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections import deque
from collections.abc import AsyncGenerator, Callable, Generator, Iterable, Iterator
from typing import Any, Generic, Literal, TypeVar, overload

from ._errors import AsyncmlError
from ._loaded import DEFAULT_MAX_QUEUE, ExecutorName, abandon, load
from ._per_item import PerItem, unwrap_failure
from .executors import Executor
from .pipeline._progress import Progress, length_of, progress_display
from .pipeline._stats import PipelineStatistics, StageStatistics

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
        progress: bool | Progress,
        total: int | None,
    ):
        self._name = getattr(fn, "__name__", type(fn).__name__)
        call = getattr(fn, "__call__", None)  # noqa: B004 - an async __call__ counts too
        if inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(call):
            raise TypeError(
                f"{self._name!r} is an async function: asyncml.map runs functions on worker "
                "threads or processes; await it in an asyncml.Pipeline stage instead"
            )
        for option, value in (("chunk_size", chunk_size), ("max_in_flight", max_in_flight)):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise ValueError(f"{option} must be an int >= 1, got {value!r}")
        self._batch_fn = PerItem(fn, self._name)
        self._items = items
        self._executor = executor
        self._workers = workers
        self._chunk_size = chunk_size
        self._ordered = ordered
        self._max_in_flight = max_in_flight
        self._return_exceptions = return_exceptions
        self._progress = progress_display(progress)
        self._total = total if total is not None else length_of(items)
        self._read = self._done = self._failed = 0
        self._started_at: float | None = None

    def statistics(self) -> PipelineStatistics:
        """Counters so far, shaped as a one-stage pipeline's (for progress displays)."""
        started = self._started_at
        elapsed = 0.0 if started is None else asyncio.get_running_loop().time() - started
        stage = StageStatistics(
            name=self._name,
            received=self._read,
            done=self._done,
            emitted=self._done - self._failed,
            in_flight=self._read - self._done,
            queued=0,
            retries=0,
            failures=self._failed,
        )
        return PipelineStatistics(
            stages=(stage,),
            read=self._read,
            finished=self._done,
            outputs=self._done - self._failed,
            failed=self._failed,
            total=self._total,
            elapsed=elapsed,
        )

    def __await__(self) -> Generator[Any, None, list[R]]:
        return self._collect().__await__()

    async def _collect(self) -> list[R]:
        return [result async for result in self]

    async def __aiter__(self) -> AsyncGenerator[R, None]:
        progress = self._progress
        if progress is None:
            async with contextlib.aclosing(self._results()) as results:
                async for result in results:
                    yield result
            return
        self._started_at = asyncio.get_running_loop().time()
        progress.open(self.statistics())
        display = asyncio.create_task(self._show(progress), name="asyncml-map-progress")
        try:
            async with contextlib.aclosing(self._results()) as results:
                async for result in results:
                    yield result
        finally:
            display.cancel()  # owned here: cancelled and awaited before the run ends
            with contextlib.suppress(asyncio.CancelledError):
                await display
            progress.close(self.statistics())

    async def _show(self, progress: Progress) -> None:
        while True:
            await asyncio.sleep(progress.interval)
            progress.update(self.statistics())

    def _counted(self) -> Iterator[Any]:
        for item in self._items:
            self._read += 1
            yield item

    async def _results(self) -> AsyncGenerator[R, None]:
        window = self._max_in_flight or DEFAULT_MAX_QUEUE
        model = load(
            self._batch_fn,
            executor=self._executor,
            workers=self._workers,
            max_batch_size=self._chunk_size,
            max_queue=window,
            name=self._name,
        )
        if self._started_at is None:
            self._started_at = asyncio.get_running_loop().time()
        async with model:
            if not self._ordered:
                completed = model.as_completed(self._counted(), return_exceptions=True)
                async with contextlib.aclosing(completed):
                    async for index, result in completed:
                        yield self._outcome(index, result)
                return
            # In order: the oldest item is awaited before more are taken, so at most
            # ``window`` are ever in flight, and never more than the queue holds.
            pending: deque[tuple[int, asyncio.Future[Any]]] = deque()
            try:
                for index, item in enumerate(self._counted()):
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
        self._done += 1
        if isinstance(error, AsyncmlError):
            self._failed += 1
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
    progress: bool | Progress = ...,
    total: int | None = ...,
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
    progress: bool | Progress = ...,
    total: int | None = ...,
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
    progress: bool | Progress = False,
    total: int | None = None,
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
        progress: ``True`` for a live display (log lines without a terminal), or a
            :class:`~asyncml.pipeline.Progress` of your own.
        total: the number of items, for progress, when ``len(items)`` fails.

    Raises:
        TypeError: ``fn`` is an async function (at once).
        ValueError: ``chunk_size`` or ``max_in_flight`` below 1 (at once).
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
        progress=progress,
        total=total,
    )
    return run
