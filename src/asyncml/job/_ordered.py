"""The step that turns batches of items into their outcomes, in input order.

This is where a job meets whatever computes: a :class:`~asyncml.LoadedModel` or an open
:class:`~asyncml.pipeline.Pipeline` (items are queued with ``call_nowait``, so batchers
form the batches) or any async callable of one item (each call runs as a task owned
here). Outcomes come out batch by batch in input
order while later batches are already running, and at most ``max_in_flight`` items (plus
the batch being queued) are outstanding, so memory stays bounded.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterable, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from .._errors import Overloaded
from .._loaded import LoadedModel, abandon
from ..pipeline import PipelineService

Tag = TypeVar("Tag")

#: What the step runs: a running model or pipeline, or an async function of one item.
ItemRunner = LoadedModel[Any, Any] | PipelineService | Callable[[Any], Awaitable[Any]]

DEFAULT_MAX_IN_FLIGHT = 8192


@dataclass(slots=True)
class Outcomes(Generic[Tag]):
    """The outcomes of one batch of items.

    Attributes:
        tag: what the caller passed with the items.
        values: one per item, in order (``None`` where the item failed).
        errors: offset -> the error of each failed item.
    """

    tag: Tag
    values: list[Any]
    errors: dict[int, BaseException]


async def ordered_outcomes(
    runner: ItemRunner,
    batches: AsyncIterable[tuple[Tag, Sequence[Any]]],
    *,
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
) -> AsyncGenerator[Outcomes[Tag], None]:
    """Runs every item of every ``(tag, items)`` batch; yields each batch's outcomes in
    input order.

    A failed item does not stop the others: its error is in :attr:`Outcomes.errors`.
    Closing the generator early cancels the items still outstanding.
    """
    if isinstance(runner, LoadedModel | PipelineService):
        submit: Callable[[Any], asyncio.Future[Any]] = runner.call_nowait
    else:
        function = runner

        def submit(item: Any) -> asyncio.Future[Any]:
            return asyncio.ensure_future(function(item))

    pending: deque[tuple[Tag, list[asyncio.Future[Any]]]] = deque()
    in_flight = 0
    try:
        async for tag, items in batches:
            futures: list[asyncio.Future[Any]] = []
            pending.append((tag, futures))
            for item in items:
                while True:
                    try:
                        futures.append(submit(item))
                        break
                    except Overloaded:
                        if len(pending) > 1:  # finishing the oldest batch makes room
                            outcomes = await _settle(*pending[0])
                            in_flight -= len(pending.popleft()[1])
                            yield outcomes
                        else:  # this batch alone fills the model's queue
                            await _first_done(futures)
            in_flight += len(futures)
            while in_flight > max_in_flight and len(pending) > 1:
                outcomes = await _settle(*pending[0])
                in_flight -= len(pending.popleft()[1])
                yield outcomes
        while pending:
            outcomes = await _settle(*pending[0])
            pending.popleft()  # only once settled, so that closing meanwhile cancels it too
            yield outcomes
    finally:
        left = [future for _, futures in pending for future in futures]
        abandon(left)
        tasks = [future for future in left if isinstance(future, asyncio.Task)]
        if tasks:  # calls of an async function: let them see their cancellation
            await asyncio.wait(tasks)


async def _first_done(futures: list[asyncio.Future[Any]]) -> None:
    for future in futures:
        if not future.done():
            await asyncio.wait((future,))
            return


async def _settle(tag: Tag, futures: list[asyncio.Future[Any]]) -> Outcomes[Tag]:
    for future in futures:
        if not future.done():  # items finish in batches: few waits per batch of items
            await asyncio.wait((future,))
    values: list[Any] = []
    errors: dict[int, BaseException] = {}
    append = values.append
    for offset, future in enumerate(futures):
        try:
            append(future.result())
        except (Exception, asyncio.CancelledError) as error:
            errors[offset] = error
            append(None)
    return Outcomes(tag, values, errors)
