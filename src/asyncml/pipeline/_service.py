"""A pipeline kept running to answer calls one item at a time (for servers and jobs).

``async with pipeline.open() as service: y = await service(x)``. Items from concurrent
callers flow through the stages together (so model stages still batch them), each call
gets exactly one outcome, and admission is bounded like a model's.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator
from types import TracebackType
from typing import TYPE_CHECKING, Any

from .._errors import Closed, Overloaded
from ._failures import DeadLetter, FailureLimit, StageError
from ._outputs import NOTHING

if TYPE_CHECKING:
    from ._pipeline import Pipeline, PipelineRun


class PipelineService:
    """A running pipeline called item by item; see :meth:`Pipeline.open`.

    Returns each item's output, or for a pipeline with a ``flat`` stage the list of its
    outputs (possibly empty). An item that failed for good raises :class:`StageError` (a
    :class:`~asyncml.ModelError`) naming the stage. Leaving the block lets the items
    already called finish.
    """

    def __init__(self, pipeline: Pipeline, *, max_queue: int):
        from ._pipeline import PipelineRun

        if max_queue < 1:
            raise ValueError(f"max_queue must be at least 1, got {max_queue}")
        self.name = "+".join(s.name for s in pipeline.stages)
        self._flat = any(s.flat for s in pipeline.stages)
        self._max_queue = max_queue
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
            for future in self._futures.values():
                if not future.done():
                    future.set_exception(Closed(f"pipeline {self.name!r} closed", model=self.name))
            await self._run.__aexit__(exc_type, exc, tb)

    def statistics(self) -> Any:
        """The underlying run's :class:`PipelineStatistics`."""
        return self._run.statistics()

    def call_nowait(self, item: Any) -> asyncio.Future[Any]:
        """Sends ``item`` in at once and returns the future of its outcome.

        Raises:
            Overloaded: ``max_queue`` items are already in the pipeline.
            Closed: the service is closing.
        """
        if self._closed:
            raise Closed(f"pipeline {self.name!r} is closed", model=self.name)
        if len(self._futures) >= self._max_queue:
            raise Overloaded(
                f"pipeline {self.name!r} holds {self._max_queue} items already", model=self.name
            )
        future = asyncio.get_running_loop().create_future()
        self._futures[self._next_index] = future
        self._next_index += 1
        self._waiting.append(item)
        self._poke_source()
        return future

    async def __call__(self, item: Any) -> Any:
        """Runs ``item`` through every stage, waiting for room first if the pipeline is full.

        Raises:
            StageError: the item failed for good at a stage.
            Closed: the service closed first.
        """
        room = self._room
        assert room is not None, "use 'async with pipeline.open()'"
        while len(self._futures) >= self._max_queue and not self._closed:
            room.clear()
            await room.wait()
        return await self.call_nowait(item)

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

    async def _answer(self) -> None:
        try:
            await self._answer_all()
        except Exception as error:  # a broken run: every waiting caller hears of it
            for future in self._futures.values():
                if not future.done():
                    future.set_exception(error)
            raise

    async def _answer_all(self) -> None:
        futures, collected, flat = self._futures, self._collected, self._flat
        async for ready in self._run.events():
            for index, output, last in ready:
                if output is not NOTHING:
                    if not last or index in collected:
                        collected.setdefault(index, []).append(output)
                    if not last:
                        continue
                future = futures.pop(index)
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
