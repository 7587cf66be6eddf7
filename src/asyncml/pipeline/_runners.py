"""Running one stage: its workers, its retries, and what it hands on.

A stage's workers take items from its :class:`Channel` and pass what they produce to the
next stage's channel (or to the pipeline's outputs). Three kinds of worker, by where the code
runs: ``async`` coroutines (one item each), ``inline`` sync functions (a chunk at a time, on
the loop), and ``pool`` workers that hand chunks to a :class:`~asyncml.LoadedModel`, whose
batcher coalesces the chunks of all of them into batches for threads or processes.

An open pipeline's calls can be withdrawn (the caller gave up, or its deadline passed):
each stage drops such items as it takes them, so that no later stage computes them.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from .._errors import AsyncmlError
from .._loaded import LoadedModel
from .._per_item import unwrap_failure
from ._channel import Channel, Item
from ._rate import TokenBucket
from ._stage import Stage, outputs_of
from ._stats import StageStatistics

Downstream = Callable[[list[Item]], Awaitable[None]]
OnFailure = Callable[[Stage, Item, BaseException], None]
#: Whether the source item of that index was withdrawn: no one waits for its outputs.
Withdrawn = Callable[[int], bool]


class StageRun:
    """One stage during one run of a pipeline."""

    def __init__(
        self,
        stage: Stage,
        inbox: Channel,
        *,
        downstream: Downstream,
        when_done: Callable[[], None] | None,
        fan_out: Callable[[int, int], None],
        on_failure: OnFailure,
        withdrawn: Withdrawn | None = None,
    ):
        self.stage = stage
        self.inbox = inbox
        self._downstream = downstream
        self._when_done = when_done
        self._alive = 0
        self._fan_out = fan_out
        self._on_failure = on_failure
        self._withdrawn = withdrawn
        self._bucket = TokenBucket(stage.rate) if stage.rate is not None else None
        self._timers: dict[int, asyncio.TimerHandle] = {}
        self._retry_keys = itertools.count()
        self.model: LoadedModel[Any, Any] | None = None
        self.model_started = False  # set by the run once the model is entered
        self.raised = False  # a worker raised (not an item's failure): the run broke
        self.received = self.done = self.emitted = self.in_flight = 0
        self.retries = self.failures = self.withdrawn = 0

    async def put(self, chunk: list[Item]) -> None:
        """Queues items that reached the stage (from the source or the stage before),
        first waiting for room; they count as received once queued. Retries re-enter the
        queue without passing here, so each item is received once."""
        await self.inbox.put(chunk)
        self.received += len(chunk)

    def workers(self) -> list[Coroutine[Any, Any, None]]:
        """The worker loops to run as tasks; the last to end calls ``when_done``."""
        stage = self.stage
        if stage.kind == "async":
            loops = [self._async_worker] * stage.concurrency
        elif stage.kind == "inline":
            loops = [self._inline_worker]
        else:
            loops = [self._pool_worker] * max(1, -(-stage.concurrency // stage.batch_size))
        self._alive = len(loops)
        return [self._until_done(loop) for loop in loops]

    async def _until_done(self, loop: Callable[[], Awaitable[None]]) -> None:
        try:
            await loop()
        except asyncio.CancelledError:
            raise
        except BaseException:
            self.raised = True
            raise
        self._alive -= 1
        if not self._alive and self._when_done is not None:
            self._when_done()  # the last worker out closes the next stage's door

    def statistics(self) -> StageStatistics:
        return StageStatistics(
            name=self.stage.name,
            received=self.received,
            done=self.done,
            emitted=self.emitted,
            in_flight=self.in_flight,
            queued=len(self.inbox) + self.inbox.retries_pending,
            retries=self.retries,
            failures=self.failures,
            withdrawn=self.withdrawn,
            broken=self.raised
            or (self.model_started and self.model is not None and self.model.statistics().broken),
        )

    def cancel_retries(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()

    # -- workers ---------------------------------------------------------------------------

    def _rated(self, size: int) -> int:
        """How many items a worker takes at once: with a rate limit, at most its burst,
        since a chunk's items start together."""
        rate = self.stage.rate
        return size if rate is None else min(size, rate.burst)

    async def _async_worker(self) -> None:
        fn, timeout, flat = self.stage.fn, self.stage.timeout, self.stage.flat
        while chunk := await self._take(1):
            item = chunk[0]
            try:
                if self._bucket is not None:
                    await self._bucket.acquire()
                if timeout is None:
                    result = await fn(item[2])
                else:
                    async with asyncio.timeout(timeout):
                        result = await fn(item[2])
                if flat:
                    result = outputs_of(result)
            except Exception as error:
                retried = self._failed(item, error)
                await self._emit([], taken=1, finished=1 - retried)
            else:
                await self._emit(self._pass_on([item], [result]), taken=1, finished=1)

    async def _inline_worker(self) -> None:
        fn, flat = self.stage.fn, self.stage.flat
        while chunk := await self._take(self._rated(256)):
            if self._bucket is not None:
                await self._bucket.acquire(len(chunk))
            results: list[Any] = []
            succeeded: list[Item] = []
            retried = 0
            for item in chunk:
                try:
                    result = fn(item[2])
                    results.append(outputs_of(result) if flat else result)
                except Exception as error:
                    retried += self._failed(item, error)
                else:
                    succeeded.append(item)
            passed = self._pass_on(succeeded, results)
            await self._emit(passed, taken=len(chunk), finished=len(chunk) - retried)

    async def _pool_worker(self) -> None:
        model = self.model
        assert model is not None, "pool stages run with their model loaded"
        # A batched flat stage's outputs are listed here; per-item ones, in the worker.
        to_list = self.stage.flat and self.stage.batched
        while chunk := await self._take(self._rated(self.stage.batch_size)):
            if self._bucket is not None:
                await self._bucket.acquire(len(chunk))
            outcomes = await model.map([item[2] for item in chunk], return_exceptions=True)
            results: list[Any] = []
            succeeded: list[Item] = []
            retried = 0
            for item, outcome in zip(chunk, outcomes, strict=True):
                outcome = unwrap_failure(outcome)
                if to_list and not isinstance(outcome, AsyncmlError):
                    try:
                        outcome = outputs_of(outcome)
                    except Exception as error:
                        retried += self._failed(item, error)
                        continue
                if isinstance(outcome, AsyncmlError):
                    retried += self._failed(item, outcome)
                else:
                    succeeded.append(item)
                    results.append(outcome)
            passed = self._pass_on(succeeded, results)
            await self._emit(passed, taken=len(chunk), finished=len(chunk) - retried)

    # -- shared steps ----------------------------------------------------------------------

    async def _take(self, limit: int) -> list[Item]:
        while True:
            chunk = await self.inbox.get(limit)
            if chunk and self._withdrawn is not None:
                chunk = self._drop_withdrawn(chunk)
                if not chunk:
                    continue  # all withdrawn, but the channel has not ended
            self.in_flight += len(chunk)
            return chunk

    def _drop_withdrawn(self, chunk: list[Item]) -> list[Item]:
        """``chunk`` less the items whose source item was withdrawn; those end here, with
        no output, as if a filter had dropped them."""
        withdrawn = self._withdrawn
        assert withdrawn is not None
        kept: list[Item] = []
        for item in chunk:
            if withdrawn(item[0]):
                self.withdrawn += 1
                self._fan_out(item[0], 0)
            else:
                kept.append(item)
        return kept

    def _pass_on(self, items: list[Item], results: list[Any]) -> list[Item]:
        """The next stage's items for ``results``, one per item or, when flat, 0..n each."""
        if not self.stage.flat:
            return [
                (root, path, result, 1)
                for (root, path, _, _), result in zip(items, results, strict=True)
            ]
        passed: list[Item] = []
        for (root, path, _, _), produced in zip(items, results, strict=True):
            if len(produced) == 1:
                passed.append((root, path, produced[0], 1))
                continue
            self._fan_out(root, len(produced))
            passed.extend((root, (*path, n), out, 1) for n, out in enumerate(produced))
        return passed

    async def _emit(self, items: list[Item], *, taken: int, finished: int) -> None:
        """Hands ``items`` on: ``taken`` items left the stage, ``finished`` of them for good
        (the others wait for a retry)."""
        self.emitted += len(items)
        try:
            if items:
                await self._downstream(items)
        finally:
            self.in_flight -= taken
            self.done += finished

    def _failed(self, item: Item, error: BaseException) -> bool:
        """Schedules a retry of ``item`` if its policy allows; returns whether it did."""
        root, path, value, attempt = item
        retry = self.stage.retry
        if not retry.retries(error, attempt):
            self.failures += 1
            self._on_failure(self.stage, item, error)
            return False
        self.retries += 1
        self.inbox.expect_retry()
        key = next(self._retry_keys)
        again: Item = (root, path, value, attempt + 1)
        delay = retry.delay(error, attempt)
        self._timers[key] = asyncio.get_running_loop().call_later(
            delay, self._retry_now, key, again
        )
        return True

    def _retry_now(self, key: int, item: Item) -> None:
        del self._timers[key]
        self.inbox.put_retry(item)
