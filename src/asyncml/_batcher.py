"""The batcher: coalesces concurrent single calls into batches for an executor.

It runs on the event loop and costs a few attribute look-ups per item; everything else is
paid per batch. Its rule: every submitted item gets exactly one outcome (its result, its
own error, a timeout, or a cancellation).

When to dispatch: a submission schedules one dispatch with ``call_soon`` while a worker is
free, so a lone call waits a single loop iteration, never for a batch to fill. Callers woken
by a finished batch run before that dispatch, so under load their next calls land in the
same batch: batches grow towards ``max_batch_size`` by themselves. With ``max_wait > 0`` a
free worker may also hold a partial batch for up to ``max_wait`` while other batches run.

Items live in the queue as ``(item, future, submitted_at, deadline)`` tuples. A cancelled
or expired item stays in the queue until dispatch skips it (or a full queue is compacted),
which keeps cancellation free of per-item bookkeeping. Length-aware models also count, for
each item a batch passed over, how often (in their :class:`~._grouping.Grouper`, keyed by
future); the count is dropped wherever the item leaves the queue.
"""

from __future__ import annotations

import asyncio
from collections import deque
from functools import partial
from typing import Any

from ._batch import BatchOutcome
from ._errors import Closed, ItemTimeout, ModelError, Overloaded
from ._grouping import WINDOW_BATCHES, Grouper, Grouping
from ._model import ModelSpec
from ._stats import LatencySummary, ModelStatistics
from .executors import Executor

_Entry = tuple[Any, "asyncio.Future[Any]", float, float]
_NO_DEADLINE = float("inf")
_LATENCY_WINDOW = 4096
_LATENCY_SAMPLES_PER_BATCH = 16


class Batcher:
    """Queues items, forms batches, hands them to ``executor`` and settles each item."""

    def __init__(
        self,
        spec: ModelSpec,
        executor: Executor,
        *,
        max_queue: int,
        timeout: float | None,
        grouping: Grouping | None = None,
    ):
        self._loop = asyncio.get_running_loop()
        self._name = spec.name
        self._executor = executor
        self._max_batch = spec.max_batch_size
        self._max_wait = spec.max_wait
        self._max_queue = max_queue
        self._timeout = timeout
        self._capacity = executor.capacity
        self._free = executor.capacity  # below 0 while batches sent ahead wait in workers
        self._ahead = -executor.prefetch  # the least _free may go, with full batches only
        self._queue: deque[_Entry] = deque()
        self._dispatch_scheduled = False
        self._reclaim_scheduled = False
        self._wait_timer: asyncio.TimerHandle | None = None
        self._space_waiters: deque[asyncio.Future[None]] = deque()
        self._reserved = 0  # room promised to woken waiters that have not queued yet
        self._idle_waiter: asyncio.Future[None] | None = None
        self._closed = False
        self._maybe_dropped = 0
        self._scanned_since_dispatch = False
        self._submitted = self._completed = self._failed = 0
        self._timed_out = self._cancelled = 0
        self._in_flight = 0
        self._batches = 0
        self._sizes: dict[int, int] = {}  # batch size -> batches, sparse: sizes may be huge
        self._latencies: deque[float] = deque(maxlen=_LATENCY_WINDOW)
        self._grouper = Grouper(grouping) if grouping is not None else None

    # -- admission ------------------------------------------------------------------------

    async def call(self, item: Any, timeout: float | None) -> Any:
        """Queues ``item`` (waiting for room if the queue is full) and returns its result.

        Raises:
            ModelError, ItemTimeout, Closed: the item's outcome, if not a result.
        """
        future = self.try_submit(item, timeout) or await self.submit(item, timeout)
        try:
            return await future
        except asyncio.CancelledError:
            self.note_dropped()
            raise

    def try_submit(self, item: Any, timeout: float | None) -> asyncio.Future[Any] | None:
        """Queues ``item`` and returns its future, or ``None`` if the queue is full.

        Raises:
            Closed: the model is closed.
        """
        if self._closed:
            raise self._closed_error()
        if len(self._queue) + self._reserved >= self._max_queue and not self._has_room():
            return None
        if timeout is None and self._timeout is None:
            return self._enqueue(item, _NO_DEADLINE)
        return self._enqueue(item, self._deadline(timeout))

    def submit_nowait(self, item: Any, timeout: float | None) -> asyncio.Future[Any]:
        """Queues ``item`` and returns its future.

        Raises:
            Overloaded: the queue is full.
            Closed: the model is closed.
        """
        future = self.try_submit(item, timeout)
        if future is None:
            raise Overloaded(
                f"model {self._name!r} is overloaded: {self._max_queue} items already queued",
                model=self._name,
            )
        return future

    async def submit(self, item: Any, timeout: float | None) -> asyncio.Future[Any]:
        """Queues ``item``, waiting for room if the queue is full; returns its future.

        Callers waiting for room are served first come, first served.

        Raises:
            ItemTimeout: the deadline passed while waiting for room.
            Closed: the model was closed before the item was queued.
        """
        deadline = self._deadline(timeout)
        if self._closed:
            raise self._closed_error()
        if not self._space_waiters and self._has_room():
            return self._enqueue(item, deadline)
        await self._wait_for_room(deadline)
        self._reserved -= 1  # the room reserved for us when we were woken
        if self._closed:
            raise self._closed_error()
        return self._enqueue(item, deadline)

    def _has_room(self) -> bool:
        if len(self._queue) + self._reserved < self._max_queue:
            return True
        self._make_room()
        return len(self._queue) + self._reserved < self._max_queue

    async def _wait_for_room(self, deadline: float) -> None:
        waiter = self._loop.create_future()
        self._space_waiters.append(waiter)
        try:
            if deadline == _NO_DEADLINE:
                await waiter
            else:
                async with asyncio.timeout_at(deadline):
                    await waiter
        except TimeoutError:
            self._leave_waiting(waiter)
            raise self._timeout_error() from None
        except BaseException:
            self._leave_waiting(waiter)
            raise

    def _leave_waiting(self, waiter: asyncio.Future[None]) -> None:
        if not waiter.done():
            waiter.cancel()
            self._space_waiters.remove(waiter)
        elif not waiter.cancelled():
            # Woken with room reserved, but leaving: the room goes to the next in line.
            self._reserved -= 1
            self._wake_space_waiters()

    def _wake_space_waiters(self) -> None:
        room = self._max_queue - len(self._queue) - self._reserved
        waiters = self._space_waiters
        while waiters and (room > 0 or self._closed):
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                self._reserved += 1
                room -= 1

    def note_dropped(self, count: int = 1) -> None:
        """Hints that ``count`` items were cancelled, so compacting a full queue may help;
        callers waiting for room get the room those items leave, first come first served."""
        self._maybe_dropped += count
        if self._space_waiters and count and not self._reclaim_scheduled:
            # Once per loop pass, however many items are dropped in it: each compaction
            # scans the whole queue.
            self._reclaim_scheduled = True
            self._loop.call_soon(self._reclaim)

    def _reclaim(self) -> None:
        self._reclaim_scheduled = False
        if self._space_waiters:
            self._make_room()
            self._wake_space_waiters()

    def _make_room(self) -> None:
        """Drops cancelled and expired items from the queue.

        Scans once per dispatch, and again only after a known cancellation or expiry:
        otherwise callers piling up at a full queue would each rescan it, quadratically.
        """
        if not self._maybe_dropped and self._scanned_since_dispatch:
            return
        self._maybe_dropped = 0
        self._scanned_since_dispatch = True
        kept: deque[_Entry] = deque()
        grouper = self._grouper
        for entry in self._queue:
            if entry[1].done():
                self._count_dropped(entry[1])
                if grouper is not None:
                    grouper.forget(entry[1])
            else:
                kept.append(entry)
        self._queue = kept

    def _deadline(self, timeout: float | None) -> float:
        if timeout is None:
            timeout = self._timeout
            if timeout is None:
                return _NO_DEADLINE
        try:
            if isinstance(timeout, bool):  # True is not a number of seconds
                raise TypeError
            deadline = self._loop.time() + timeout
        except TypeError:
            raise TypeError(f"timeout must be a number of seconds, got {timeout!r}") from None
        if deadline != deadline:  # NaN, which no clock reading passes or not
            raise ValueError("timeout must be a number of seconds, got nan")
        return deadline

    def _enqueue(self, item: Any, deadline: float) -> asyncio.Future[Any]:
        loop = self._loop
        future: asyncio.Future[Any] = asyncio.Future(loop=loop)
        now = loop.time()
        if deadline != _NO_DEADLINE:
            timer = loop.call_at(deadline, self._expire, future)
            future.add_done_callback(partial(_cancel_timer, timer))
        self._queue.append((item, future, now, deadline))
        self._submitted += 1
        if (
            self._free > 0 or (self._free > self._ahead and len(self._queue) >= self._max_batch)
        ) and (
            not self._dispatch_scheduled
            # A batch held back by max_wait is only worth another look once it is full.
            and (self._wait_timer is None or len(self._queue) >= self._max_batch)
        ):
            self._dispatch_scheduled = True
            loop.call_soon(self._dispatch)
        return future

    def _expire(self, future: asyncio.Future[Any]) -> None:
        # Counted when the item leaves the queue or its batch, so the totals always add up.
        if not future.done():
            future.set_exception(self._timeout_error())
            self.note_dropped()

    # -- dispatch -------------------------------------------------------------------------

    def _dispatch(self) -> None:
        self._dispatch_scheduled = False
        self._scanned_since_dispatch = False
        if self._wait_timer is not None:
            self._wait_timer.cancel()
            self._wait_timer = None
        queue = self._queue
        while queue and (
            self._free > 0 or (self._free > self._ahead and len(queue) >= self._max_batch)
        ):
            if self._max_wait and len(queue) < self._max_batch and self._free < self._capacity:
                # Other batches are running, so more items are on their way: let this grow.
                due = queue[0][2] + self._max_wait
                if due > self._loop.time():
                    self._wait_timer = self._loop.call_at(due, self._dispatch)
                    break
            live, items = self._take()
            if not live:
                continue
            self._free -= 1
            self._in_flight += len(live)
            self._batches += 1
            self._sizes[len(live)] = self._sizes.get(len(live), 0) + 1
            self._executor.submit(items, partial(self._complete, live))
        if self._space_waiters:
            self._wake_space_waiters()
        self._notify_if_idle()

    def _take(self) -> tuple[list[_Entry], list[Any]]:
        if self._grouper is not None:
            return self._take_similar(self._grouper)
        queue = self._queue
        popleft = queue.popleft
        entries = [popleft() for _ in range(min(len(queue), self._max_batch))]
        now = self._loop.time()
        if all(entry[3] > now and not entry[1].done() for entry in entries):
            return entries, [entry[0] for entry in entries]
        live = [entry for entry in entries if not self._drop_if_dead(entry, now)]
        return live, [entry[0] for entry in live]

    def _drop_if_dead(self, entry: _Entry, now: float) -> bool:
        """Settles and counts a cancelled or expired entry; True if it was one."""
        future = entry[1]
        if future.done():
            self._count_dropped(future)
            return True
        if entry[3] <= now:  # expired, and its timer has not fired yet
            future.set_exception(self._timeout_error())
            self._timed_out += 1
            return True
        return False

    def _take_similar(self, grouper: Grouper) -> tuple[list[_Entry], list[Any]]:
        """The oldest queued item, the items due after being passed over, and the items that
        add the least padding to them (see ``_grouping``)."""
        queue = self._queue
        now = self._loop.time()
        window: list[_Entry] = []
        costs: list[float] = []
        while queue and len(window) < self._max_batch * WINDOW_BATCHES:
            entry = queue.popleft()
            if self._drop_if_dead(entry, now):
                grouper.forget(entry[1])
                continue
            try:
                cost = float(grouper.item_cost(entry[0]))
            except Exception as exc:  # a bad item: it fails alone, as in predict()
                grouper.forget(entry[1])
                message = f"model {self._name!r}: item_cost() failed: {type(exc).__name__}: {exc}"
                entry[1].set_exception(ModelError(message, model=self._name, cause=exc))
                self._failed += 1
                continue
            window.append(entry)
            costs.append(cost)
        if not window:
            return [], []
        chosen = grouper.pick([entry[1] for entry in window], costs, self._max_batch)
        taken = set(chosen)
        queue.extendleft(reversed([e for i, e in enumerate(window) if i not in taken]))
        live = [window[i] for i in chosen]
        return live, [entry[0] for entry in live]

    def _complete(self, live: list[_Entry], outcome: BatchOutcome) -> None:
        self._free += 1
        self._in_flight -= len(live)
        errors = outcome.errors
        settled = 0
        if errors is None:  # the common case, kept lean: it runs once per item
            for entry, value in zip(live, outcome.values, strict=True):
                future = entry[1]
                if future.done():  # cancelled or expired while its batch ran
                    self._count_dropped(future)
                else:
                    future.set_result(value)
                    settled += 1
            self._completed += settled
        else:
            for index, (entry, value) in enumerate(zip(live, outcome.values, strict=True)):
                future = entry[1]
                if future.done():
                    self._count_dropped(future)
                elif index in errors:
                    future.set_exception(errors[index])
                    self._failed += 1
                else:
                    future.set_result(value)
                    self._completed += 1
        # A sample of each batch's latencies: enough for percentiles, cheap per item.
        now = self._loop.time()
        step = len(live) // _LATENCY_SAMPLES_PER_BATCH + 1
        self._latencies.extend([now - entry[2] for entry in live[::step]])
        if self._queue and not self._dispatch_scheduled:
            # Deferred, so that the callers this batch just woke can join the next batch.
            self._dispatch_scheduled = True
            self._loop.call_soon(self._dispatch)
        self._notify_if_idle()

    def _count_dropped(self, future: asyncio.Future[Any]) -> None:
        if future.cancelled():
            self._cancelled += 1
        else:
            self._timed_out += 1

    # -- closing --------------------------------------------------------------------------

    def close(self) -> None:
        """Refuses new items; queued and running items still complete."""
        self._closed = True
        self._wake_space_waiters()

    async def wait_idle(self) -> None:
        """Returns once nothing is queued or running."""
        while self._queue or self._in_flight:
            self._idle_waiter = self._loop.create_future()
            try:
                await self._idle_waiter
            finally:
                self._idle_waiter = None

    def _notify_if_idle(self) -> None:
        waiter = self._idle_waiter
        if waiter is not None and not waiter.done() and not self._queue and not self._in_flight:
            waiter.set_result(None)

    def abort(self) -> None:
        """Closes, and fails every queued item with :class:`Closed` (running ones go on)."""
        self.close()
        if self._wait_timer is not None:
            self._wait_timer.cancel()
            self._wait_timer = None
        if self._grouper is not None:
            self._grouper.clear()
        while self._queue:
            future = self._queue.popleft()[1]
            if future.done():
                self._count_dropped(future)
            else:
                future.set_exception(self._closed_error())
                self._cancelled += 1
        self._notify_if_idle()

    def _closed_error(self) -> Closed:
        return Closed(f"model {self._name!r} is closed", model=self._name)

    def _timeout_error(self) -> ItemTimeout:
        return ItemTimeout(f"model {self._name!r}: the item's deadline passed", model=self._name)

    # -- observing ------------------------------------------------------------------------

    def statistics(self) -> ModelStatistics:
        """A snapshot of the counters, queue depth, batch sizes and latency."""
        return ModelStatistics(
            model=self._name,
            workers=self._capacity,
            submitted=self._submitted,
            completed=self._completed,
            failed=self._failed,
            timed_out=self._timed_out,
            cancelled=self._cancelled,
            queued=len(self._queue),
            in_flight=self._in_flight,
            batches=self._batches,
            batch_sizes=dict(sorted(self._sizes.items())),
            latency=LatencySummary.of(self._latencies),
            worker_restarts=getattr(self._executor, "restarts", 0),
            broken=self._executor.broken is not None,
        )


def _cancel_timer(timer: asyncio.TimerHandle, _future: asyncio.Future[Any]) -> None:
    timer.cancel()
