"""A pipeline kept running to answer calls one item at a time (for servers and jobs).

``async with pipeline.open() as service: y = await service(x)``. Items from concurrent
callers flow through the stages together (so model stages still batch them), each call
gets exactly one outcome, and admission is bounded like a model's.

A call can be withdrawn before its answer: its caller cancels the future, or its deadline
passes (:class:`~asyncml.ItemTimeout`). The next stage to take the item drops it, so no
later stage computes it; a stage already running it finishes.

Once the service closes, or its run breaks (a stage's worker raised rather than failing an
item), no call is left without an answer: the calls waiting for theirs, or for room, fail
with :class:`~asyncml.Closed`, and so does every later call.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections import deque
from collections.abc import AsyncIterator, Coroutine
from types import TracebackType
from typing import TYPE_CHECKING, Any

from .._errors import Closed, ItemTimeout, Overloaded
from ._failures import DeadLetter, FailureLimit, PipelineFailed, StageError
from ._outputs import NOTHING
from ._stats import PipelineStatistics

if TYPE_CHECKING:
    from ._pipeline import Pipeline, PipelineRun


class PipelineService:
    """A running pipeline called item by item; see :meth:`Pipeline.open`.

    Returns each item's output, or for a pipeline with a ``flat`` stage the list of its
    outputs (possibly empty). An item that failed for good raises :class:`StageError` (a
    :class:`~asyncml.ModelError`) naming the stage. Leaving the block lets the items
    already called finish; leaving it on an exception fails them with
    :class:`~asyncml.Closed`. A run that breaks (a stage's worker raised, which the task
    group reports by cancelling the task that entered the service) fails the calls made
    and refuses new ones with :class:`~asyncml.Closed` at once, its ``__cause__`` the
    run's :class:`PipelineFailed`; leaving the block raises the worker's error.

    Attributes:
        name: the name given to :meth:`Pipeline.open`, else the stages' names joined by
            ``+``.
        flat: each call answers the list of its item's outputs (a stage is ``flat``).
    """

    def __init__(
        self,
        pipeline: Pipeline,
        *,
        max_queue: int,
        timeout: float | None = None,
        name: str | None = None,
    ):
        from ._pipeline import PipelineRun

        if max_queue < 1:
            raise ValueError(f"max_queue must be at least 1, got {max_queue}")
        if timeout is not None and not timeout > 0:
            raise ValueError(f"timeout must be a number of seconds > 0, got {timeout!r}")
        self.name = name or "+".join(s.name for s in pipeline.stages)
        self.flat = any(s.flat for s in pipeline.stages)
        self._max_queue = max_queue
        self._timeout = timeout
        self._deadlines: dict[int, asyncio.TimerHandle] = {}
        self._waiting: deque[Any] = deque()  # called, not yet taken by the source
        self._futures: dict[int, asyncio.Future[Any]] = {}
        self._collected: dict[int, list[Any]] = {}
        self._errors: dict[int, DeadLetter] = {}
        self._next_index = 0
        self._closed = False
        self._wake_source: asyncio.Future[None] | None = None
        self._room: asyncio.Event | None = None
        self._answering: asyncio.Task[None] | None = None
        self._run: PipelineRun = PipelineRun(
            pipeline,
            self._source(),
            ordered=False,
            with_index=True,
            max_in_flight=max_queue,
            dead_letters=self._dead,
            failure_limit=FailureLimit(None),
            progress=None,
            total=None,
            withdrawn=self._withdrawn,
        )

    async def __aenter__(self) -> PipelineService:
        self._room = asyncio.Event()
        await self._run.__aenter__()
        self._answering = asyncio.create_task(self._answer(), name="asyncml-pipeline-answers")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._closed = True
        self._poke_source()
        answering = self._answering
        assert answering is not None
        try:
            if exc_type is None:
                await asyncio.shield(answering)  # drain: every call made gets its answer
            else:
                answering.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await answering
        finally:
            for deadline in self._deadlines.values():
                deadline.cancel()
            self._deadlines.clear()
            self._end()
            await self._run.__aexit__(exc_type, exc, tb)

    @property
    def max_queue(self) -> int:
        """Items inside the pipeline at most; calls beyond it are refused or wait."""
        return self._max_queue

    @property
    def timeout(self) -> float | None:
        """The default deadline of a call, in seconds (``None``: no deadline)."""
        return self._timeout

    def statistics(self) -> PipelineStatistics:
        """The underlying run's counters, stage by stage; ``broken`` once a worker stage
        has lost every worker for good, or a stage broke the run."""
        return self._run.statistics()

    @property
    def error(self) -> PipelineFailed | None:
        """What broke the run, if something did (a stage's worker raised: the error is its
        ``__cause__``); the service answers every call with :class:`~asyncml.Closed`
        from then on."""
        return self._run.error

    def call_nowait(self, item: Any, *, timeout: float | None = None) -> asyncio.Future[Any]:
        """Sends ``item`` in at once and returns the future of its outcome.

        Cancelling the future withdraws the item (see the module's docs).

        Args:
            timeout: seconds until the item's deadline, when its future fails with
                :class:`~asyncml.ItemTimeout` and the item is withdrawn; defaults to the
                service's ``timeout``; ``math.inf`` for none.

        Raises:
            Overloaded: ``max_queue`` items are already in the pipeline.
            Closed: the service is closing, or its run broke.
        """
        if self._closed or self._run.error is not None:
            raise self._closed_error("is closed")
        if len(self._futures) >= self._max_queue:
            raise Overloaded(
                f"pipeline {self.name!r} holds {self._max_queue} items already", model=self.name
            )
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        index = self._next_index
        self._futures[index] = future
        self._next_index += 1
        if timeout is None:
            timeout = self._timeout
        if timeout is not None and timeout != math.inf:
            self._deadlines[index] = loop.call_later(timeout, self._expire, index)
        self._waiting.append(item)
        self._poke_source()
        return future

    def __call__(self, item: Any, *, timeout: float | None = None) -> Coroutine[Any, Any, Any]:
        """Runs ``item`` through every stage, waiting for room first if the pipeline is full;
        await it.

        Args:
            timeout: as for :meth:`call_nowait`; the wait for room counts.

        Raises:
            StageError: the item failed for good at a stage.
            ItemTimeout: its deadline passed first.
            Closed: the service closed (or its run broke) first.
        """
        return self._call(item, self._timeout if timeout is None else timeout)

    async def _call(self, item: Any, seconds: float | None) -> Any:
        room = self._room
        assert room is not None, "use 'async with pipeline.open()'"
        loop = asyncio.get_running_loop()
        deadline = None if seconds is None or seconds == math.inf else loop.time() + seconds
        try:
            async with asyncio.timeout_at(deadline):
                while len(self._futures) >= self._max_queue and not self._closed:
                    room.clear()
                    await room.wait()
        except TimeoutError:
            raise self._timeout_error() from None
        left = math.inf if deadline is None else deadline - loop.time()
        return await self.call_nowait(item, timeout=left)

    async def _source(self) -> AsyncIterator[Any]:
        while True:
            while self._waiting:
                yield self._waiting.popleft()
            if self._closed:
                return
            self._wake_source = asyncio.get_running_loop().create_future()
            try:
                await self._wake_source
            finally:
                self._wake_source = None

    def _poke_source(self) -> None:
        if self._wake_source is not None and not self._wake_source.done():
            self._wake_source.set_result(None)

    def _dead(self, letter: DeadLetter) -> None:
        self._errors[letter.index] = letter

    def _withdrawn(self, index: int) -> bool:
        """Whether no one waits for the item any more: its future is done before its
        answer (cancelled, or past its deadline), as answered ones leave ``_futures``."""
        future = self._futures.get(index)
        return future is None or future.done()

    def _expire(self, index: int) -> None:
        del self._deadlines[index]
        future = self._futures.get(index)
        if future is not None and not future.done():
            future.set_exception(self._timeout_error())

    def _timeout_error(self) -> ItemTimeout:
        return ItemTimeout(f"pipeline {self.name!r}: the item's deadline passed", model=self.name)

    async def _answer(self) -> None:
        try:
            await self._answer_all()
        except PipelineFailed as error:
            if error is not self._run.error:
                raise
            # The run broke: the calls hear of it now (see _end); leaving the block raises
            # the worker's own error, from the run's task group.
        finally:
            self._end()

    def _end(self) -> None:
        """No more answers will come (the run ended, broke or is being left): the calls
        still waiting fail, so do the calls waiting for room and every later call."""
        self._closed = True
        self._poke_source()
        for future in self._futures.values():
            if not future.done():
                future.set_exception(self._closed_error("closed"))
        if self._room is not None:
            self._room.set()  # the callers waiting for room see that it closed

    def _closed_error(self, state: str) -> Closed:
        failure = self._run.error
        if failure is None:
            return Closed(f"pipeline {self.name!r} {state}", model=self.name)
        error = Closed(f"pipeline {self.name!r} stopped: {failure}", model=self.name)
        error.__cause__ = failure
        return error

    async def _answer_all(self) -> None:
        futures, collected, flat = self._futures, self._collected, self.flat
        deadlines = self._deadlines
        async for ready in self._run.events():
            for index, output, last in ready:
                if output is not NOTHING:
                    if not last or index in collected:
                        collected.setdefault(index, []).append(output)
                    if not last:
                        continue
                future = futures.pop(index)
                if deadlines:
                    deadline = deadlines.pop(index, None)
                    if deadline is not None:
                        deadline.cancel()
                outputs = collected.pop(index, None)
                letter = self._errors.pop(index, None)
                if future.done():
                    continue  # the caller gave up
                if letter is not None:
                    future.set_exception(StageError.of(letter))
                elif flat:
                    future.set_result(outputs if outputs is not None else _only(output))
                else:
                    future.set_result(output)
            if self._room is not None:
                self._room.set()


def _only(output: Any) -> list[Any]:
    return [] if output is NOTHING else [output]
