"""The user's handle: ``async with asyncml.load(model) as m: y = await m(x)``."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine, Iterable, Sequence
from functools import partial
from types import TracebackType
from typing import Any, Generic, Literal, overload

from ._batcher import Batcher
from ._errors import AsyncmlError, Closed
from ._grouping import Grouping
from ._model import In, Model, ModelSpec, Out, grouping_defaults, model_spec
from ._stats import ModelStatistics
from ._threads import IntraOpThreads
from .executors import Executor, InlineExecutor, ProcessExecutor, RayExecutor, ThreadExecutor

ExecutorName = Literal["auto", "inline", "thread", "process", "ray"]

#: Default bound of the admission queue: this many items, or two full batches per worker.
DEFAULT_MAX_QUEUE = 1024


class LoadedModel(Generic[In, Out]):
    """A model running on its workers; call it from any coroutine.

    Use it as an async context manager (see :func:`load`). Entering starts the workers and
    returns once each ran ``setup()`` and ``warmup()``. Leaving normally stops taking calls
    and lets queued and running items finish; leaving on an exception or a cancellation
    (Ctrl-C) fails queued items with :class:`Closed` and lets running batches finish
    (threads cannot be interrupted) or cancels them (``inline``). Either way no worker
    thread or task outlives the ``async with`` block.
    """

    def __init__(
        self,
        spec: ModelSpec,
        executor: Executor,
        *,
        max_queue: int,
        timeout: float | None,
        grouping: Grouping | None = None,
    ):
        self._spec = spec
        self._executor = executor
        self._max_queue = max_queue
        self._timeout = timeout
        self._grouping = grouping
        self._batcher: Batcher | None = None
        self._entered = self._exited = False

    @property
    def name(self) -> str:
        """The model's name, as shown in errors and statistics."""
        return self._spec.name

    @property
    def max_queue(self) -> int:
        """Items queued at most; calls beyond it wait, or raise with ``call_nowait``."""
        return self._max_queue

    @property
    def timeout(self) -> float | None:
        """The default deadline of a call, in seconds (``None``: no deadline)."""
        return self._timeout

    async def __aenter__(self) -> LoadedModel[In, Out]:
        if self._batcher is not None and not self._exited:
            raise RuntimeError(f"model {self.name!r} is already running")
        if self._entered:  # its executor has run (or failed to start): it cannot again
            raise RuntimeError(
                f"model {self.name!r} has already run: call asyncml.load() again to run it anew"
            )
        self._entered = True
        await self._executor.start(self._spec)
        self._batcher = Batcher(
            self._spec,
            self._executor,
            max_queue=self._max_queue,
            timeout=self._timeout,
            grouping=self._grouping,
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        batcher = self._running()
        self._exited = True
        drained = False
        try:
            if exc_type is None:
                batcher.close()
                await batcher.wait_idle()
                drained = True
        finally:
            batcher.abort()
            try:
                await self._executor.aclose(graceful=drained)
            except AsyncmlError as close_error:
                if exc is None:
                    raise
                # The block's own exception matters more; keep the close failure beside it.
                exc.add_note(f"while closing model {self.name!r}: {close_error}")

    def _running(self) -> Batcher:
        if self._batcher is None:
            if self._entered:  # its start failed
                raise Closed(f"model {self.name!r} failed to start", model=self.name)
            raise RuntimeError(f"model {self.name!r} is not running: use 'async with'")
        return self._batcher

    def __call__(self, item: In, *, timeout: float | None = None) -> Coroutine[Any, Any, Out]:
        """Runs ``item`` through the model (in a batch with concurrent calls); await it.

        Waits for room when the admission queue is full.

        Args:
            item: one input.
            timeout: seconds until the item's deadline (waiting for room included); defaults
                to the model's ``timeout``; ``math.inf`` for none.

        Raises:
            ModelError: ``predict()`` failed for this item.
            ItemTimeout: the deadline passed first; if the item was still queued, it was
                never computed.
            Closed: the model is closed.
        """
        # A plain method returning the batcher's coroutine: one coroutine per call, not two.
        coroutine: Coroutine[Any, Any, Out] = self._running().call(item, timeout)
        return coroutine

    def call_nowait(self, item: In, *, timeout: float | None = None) -> asyncio.Future[Out]:
        """Queues ``item`` at once and returns the future of its result.

        Cancelling the future before its batch is dispatched removes the item.

        Raises:
            Overloaded: the admission queue is full.
            Closed: the model is closed.
        """
        return self._running().submit_nowait(item, timeout)

    @overload
    async def map(
        self,
        items: Iterable[In],
        *,
        timeout: float | None = None,
        return_exceptions: Literal[False] = False,
    ) -> list[Out]: ...

    @overload
    async def map(
        self,
        items: Iterable[In],
        *,
        timeout: float | None = None,
        return_exceptions: Literal[True],
    ) -> list[Out | AsyncmlError]: ...

    async def map(
        self,
        items: Iterable[In],
        *,
        timeout: float | None = None,
        return_exceptions: bool = False,
    ) -> list[Out] | list[Out | AsyncmlError]:
        """Runs every item and returns the results in input order.

        Items are submitted as room allows, so an input far larger than the queue is fine.

        Args:
            items: the inputs.
            timeout: per-item deadline in seconds (see :meth:`__call__`).
            return_exceptions: put each failed item's error in its place instead of raising.

        Raises:
            AsyncmlError: the first failed item's error (its ``index`` set), unless
                ``return_exceptions``; the items not yet finished are then cancelled.
        """
        batcher = self._running()
        futures: list[asyncio.Future[Any]] = []
        settled = 0  # futures[:settled] are done and succeeded
        try:
            for item in items:
                try:
                    future = batcher.try_submit(item, timeout)
                except AsyncmlError as error:  # closed meanwhile: the item's outcome
                    future = _failed(error)
                if future is None:
                    if not return_exceptions:  # fail early, not after the whole input
                        settled = _raise_first_failure(futures, settled)
                    future = await _submit_or_fail(batcher, item, timeout)
                futures.append(future)
            results: list[Any] = []
            for index, future in enumerate(futures):
                try:
                    results.append(await future)
                except AsyncmlError as error:
                    error.index = index
                    if not return_exceptions:
                        raise
                    results.append(error)
            return results
        finally:
            batcher.note_dropped(abandon(futures))

    @overload
    def as_completed(
        self,
        items: Iterable[In],
        *,
        timeout: float | None = None,
        return_exceptions: Literal[False] = False,
    ) -> AsyncGenerator[tuple[int, Out], None]: ...

    @overload
    def as_completed(
        self,
        items: Iterable[In],
        *,
        timeout: float | None = None,
        return_exceptions: Literal[True],
    ) -> AsyncGenerator[tuple[int, Out | AsyncmlError], None]: ...

    async def as_completed(
        self,
        items: Iterable[In],
        *,
        timeout: float | None = None,
        return_exceptions: bool = False,
    ) -> AsyncGenerator[tuple[int, Any], None]:
        """Yields ``(index, result)`` pairs as items finish, submitting as results are taken.

        At most the model's queue size of items is outstanding at a time, so ``items`` may be
        an endless generator. Closing the generator (leaving an ``async with
        contextlib.aclosing(...)`` block, or its garbage collection after ``break``) cancels
        the outstanding items.

        Once the model has closed, the item it refused (with :class:`Closed`) is the last
        one taken from ``items``.

        Raises:
            AsyncmlError: a failed item's error (its ``index`` set), unless
                ``return_exceptions``, which yields ``(index, error)`` instead.
        """
        batcher = self._running()
        loop = asyncio.get_running_loop()
        outstanding: dict[int, asyncio.Future[Any]] = {}
        finished: deque[int] = deque()
        wakeup: list[asyncio.Future[None]] = []

        def on_done(index: int, _future: asyncio.Future[Any]) -> None:
            finished.append(index)
            if wakeup and not wakeup[0].done():
                wakeup[0].set_result(None)

        async def next_finished() -> tuple[int, Any]:
            while not finished:
                wakeup[:] = [loop.create_future()]
                await wakeup[0]
            index = finished.popleft()
            future = outstanding.pop(index)
            try:
                return index, future.result()
            except AsyncmlError as error:
                error.index = index
                if not return_exceptions:
                    raise
                return index, error

        try:
            for index, item in enumerate(items):
                while len(outstanding) >= self._max_queue or finished:
                    yield await next_finished()
                try:
                    future = batcher.try_submit(item, timeout)
                except AsyncmlError as error:  # closed meanwhile: the item's outcome
                    future = _failed(error)
                if future is None:
                    future = await _submit_or_fail(batcher, item, timeout)
                outstanding[index] = future
                future.add_done_callback(partial(on_done, index))
                if (
                    future.done()
                    and not future.cancelled()
                    and isinstance(future.exception(), Closed)
                ):
                    break  # no later item can run: do not drain an endless input
            while outstanding:
                yield await next_finished()
        finally:
            batcher.note_dropped(abandon(outstanding.values()))

    def statistics(self) -> ModelStatistics:
        """A frozen snapshot: counters, queue depth, batch-size histogram, latency."""
        return self._running().statistics()


async def _submit_or_fail(
    batcher: Batcher, item: Any, timeout: float | None
) -> asyncio.Future[Any]:
    """Waits for room and queues ``item``; a refusal becomes the item's failed future, so
    ``map`` and ``as_completed`` report it in the item's place like any other failure."""
    try:
        return await batcher.submit(item, timeout)
    except AsyncmlError as error:
        return _failed(error)


def _raise_first_failure(futures: list[asyncio.Future[Any]], start: int) -> int:
    """Raises the error of the first failed item if every item before it is done; returns
    how many items from the start are done and succeeded."""
    while start < len(futures) and futures[start].done():
        future = futures[start]
        error = None if future.cancelled() else future.exception()
        if isinstance(error, AsyncmlError):
            error.index = start
            raise error
        start += 1
    return start


def _failed(error: AsyncmlError) -> asyncio.Future[Any]:
    failed: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    failed.set_exception(error)
    return failed


def abandon(futures: Iterable[asyncio.Future[Any]]) -> int:
    """Cancels unfinished futures and marks failed ones as seen (no 'never retrieved').

    Returns how many it cancelled.
    """
    cancelled = 0
    for future in futures:
        if not future.done():
            future.cancel()
            cancelled += 1
        elif not future.cancelled():
            future.exception()
    return cancelled


@overload
def load(
    model: type[Model[In, Out]] | Model[In, Out],
    /,
    *,
    executor: ExecutorName | Executor = ...,
    workers: int | None = ...,
    max_batch_size: int | None = ...,
    max_wait: float | None = ...,
    collate: Literal["list", "stack"] | None = ...,
    timeout: float | None = ...,
    max_queue: int | None = ...,
    intra_op_threads: IntraOpThreads = ...,
    item_cost: Callable[[Any], float] | None = ...,
    max_batch_cost: float | None = ...,
    name: str | None = ...,
) -> LoadedModel[In, Out]: ...


@overload
def load(
    model: Callable[[list[In]], Awaitable[Sequence[Out]]] | Callable[[list[In]], Sequence[Out]],
    /,
    *,
    executor: ExecutorName | Executor = ...,
    workers: int | None = ...,
    max_batch_size: int | None = ...,
    max_wait: float | None = ...,
    collate: Literal["list", "stack"] | None = ...,
    timeout: float | None = ...,
    max_queue: int | None = ...,
    intra_op_threads: IntraOpThreads = ...,
    item_cost: Callable[[Any], float] | None = ...,
    max_batch_cost: float | None = ...,
    name: str | None = ...,
) -> LoadedModel[In, Out]: ...


@overload
def load(
    model: Callable[[Any], Any],
    /,
    *,
    executor: ExecutorName | Executor = ...,
    workers: int | None = ...,
    max_batch_size: int | None = ...,
    max_wait: float | None = ...,
    collate: Literal["list", "stack"] | None = ...,
    timeout: float | None = ...,
    max_queue: int | None = ...,
    intra_op_threads: IntraOpThreads = ...,
    item_cost: Callable[[Any], float] | None = ...,
    max_batch_cost: float | None = ...,
    name: str | None = ...,
) -> LoadedModel[Any, Any]: ...


def load(
    model: Any,
    /,
    *,
    executor: ExecutorName | Executor = "auto",
    workers: int | None = None,
    max_batch_size: int | None = None,
    max_wait: float | None = None,
    collate: Literal["list", "stack"] | None = None,
    timeout: float | None = None,
    max_queue: int | None = None,
    intra_op_threads: IntraOpThreads = "auto",
    item_cost: Callable[[Any], float] | None = None,
    max_batch_cost: float | None = None,
    name: str | None = None,
) -> LoadedModel[Any, Any]:
    """Prepares ``model`` to run on workers; enter the result with ``async with``.

    Args:
        model: a :class:`Model` subclass (built once per worker), a :class:`Model` instance
            (deep-copied per worker before ``setup()``), or a function taking a batch (a
            list) and returning one output per item; ``async def`` functions and predicts
            run on the event loop.
        executor: ``"thread"`` (synchronous models), ``"process"`` (synchronous models that
            hold the GIL or may crash: one process per worker), ``"ray"`` (synchronous
            models in Ray actors, locally or on a cluster: one actor per worker; see
            :class:`~asyncml.executors.RayExecutor`), ``"inline"`` (async models),
            ``"auto"`` (thread or inline, whichever fits), or an
            :class:`~asyncml.executors.Executor` such as a configured
            :class:`~asyncml.executors.ProcessExecutor`.
        workers: workers (model instances), each running one batch at a time (default 1).
        max_batch_size: most items per ``predict`` call (default: the model's, else 64).
        max_wait: seconds a free worker may hold a partial batch while others run
            (default: the model's, else 0).
        collate: ``"list"`` (default) or ``"stack"`` (``numpy.stack`` the items).
        timeout: default per-item deadline in seconds (default: none).
        max_queue: bound of the admission queue (default 1024, or two full batches per
            worker if that is more).
        intra_op_threads: BLAS/OpenMP/torch threads per worker: ``"auto"`` shares the
            cores among the workers; ``None`` leaves the libraries' defaults.
        item_cost: cost of one item, e.g. ``len`` of a text, for length-aware batching:
            each batch holds the oldest queued item and those nearest to it in cost, so that
            padding waste drops (default: the model's, else off). Runs in the batcher.
        max_batch_cost: budget of a batch's padded cost (its size times its dearest item's
            cost), on top of ``max_batch_size``; needs ``item_cost``.
        name: the model's name in errors and statistics (default: class or function name).

    Raises:
        TypeError: ``model`` is not a model, or the executor cannot run it.
        ValueError: an option is out of range.
    """
    spec = model_spec(
        model, name=name, max_batch_size=max_batch_size, max_wait=max_wait, collate=collate
    )
    pool = _executor(spec, executor, workers, intra_op_threads)
    pool.check(spec)
    if max_queue is None:
        max_queue = max(DEFAULT_MAX_QUEUE, 2 * pool.capacity * spec.max_batch_size)
    if isinstance(max_queue, bool) or not isinstance(max_queue, int) or max_queue < 1:
        raise ValueError(f"max_queue must be an int >= 1, got {max_queue!r}")
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0
    ):
        raise ValueError(f"timeout must be a number of seconds > 0 or None, got {timeout!r}")
    default_cost, default_budget = grouping_defaults(model)
    item_cost = default_cost if item_cost is None else item_cost
    max_batch_cost = default_budget if max_batch_cost is None else max_batch_cost
    if max_batch_cost is not None and item_cost is None:
        raise ValueError("max_batch_cost needs item_cost, the function that prices an item")
    grouping = None if item_cost is None else Grouping(item_cost, max_batch_cost)
    return LoadedModel(spec, pool, max_queue=max_queue, timeout=timeout, grouping=grouping)


def _executor(
    spec: ModelSpec,
    executor: ExecutorName | Executor,
    workers: int | None,
    intra_op_threads: IntraOpThreads,
) -> Executor:
    if isinstance(executor, Executor):
        if workers is not None:
            raise ValueError("workers= applies to a named executor; size the instance instead")
        return executor
    if executor == "auto":
        executor = "inline" if spec.is_async else "thread"
    if executor == "inline":
        return InlineExecutor(1 if workers is None else workers)
    if executor == "thread":
        return ThreadExecutor(1 if workers is None else workers, intra_op_threads=intra_op_threads)
    if executor == "process":
        return ProcessExecutor(1 if workers is None else workers, intra_op_threads=intra_op_threads)
    if executor == "ray":
        return RayExecutor(1 if workers is None else workers, intra_op_threads=intra_op_threads)
    raise ValueError(
        "executor must be 'auto', 'inline', 'thread', 'process', 'ray' or an Executor, "
        f"not {executor!r}"
    )
