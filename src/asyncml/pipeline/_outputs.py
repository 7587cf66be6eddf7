"""Where items leave the pipeline: the window of source items in flight, and output order.

Every source item (a *root*) is admitted into a window of ``window`` roots; it leaves it once
all that descends from it was delivered to the consumer, dropped by a filter or sent to the
dead letters. So the window bounds the pipeline's memory, and in input order it is also the
reorder buffer: a slow item holds back at most ``window`` others.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

#: Marks the end of a source item that left no output behind it.
NOTHING: Any = object()


class Outputs:
    """Admits roots, collects outputs and hands them to the consumer."""

    def __init__(self, window: int, *, ordered: bool):
        if window < 1:
            raise ValueError(f"max_in_flight must be at least 1, got {window}")
        self._window = window
        self._ordered = ordered
        self.admitted = 0
        self.delivered = 0  # roots whose outputs were all taken (or that had none)
        self.outputs = 0
        self._pending: dict[int, int] = {}  # items alive per root, for roots that fanned out
        self._held: dict[int, list[tuple[tuple[int, ...], Any]]] = {}  # ordered: not yet due
        self._finished: set[int] = set()  # ordered: complete but waiting for earlier roots
        self._next = 0  # ordered: the oldest root not yet delivered
        self._ready: deque[tuple[int, Any, bool]] = deque()  # (root, output, root's last)
        self._source_done = False
        self._error: BaseException | None = None
        self._consumer: asyncio.Future[None] | None = None
        self._room: asyncio.Future[None] | None = None

    # -- the source side -------------------------------------------------------------------

    async def admit(self, count: int) -> None:
        """Waits until ``count`` more roots fit in the window, then admits them."""
        while self.admitted - self.delivered >= self._window:
            self._room = asyncio.get_running_loop().create_future()
            try:
                await self._room
            finally:
                self._room = None
        self.admitted += count

    def source_done(self) -> None:
        self._source_done = True
        self._wake_consumer()

    def fail(self, error: BaseException) -> None:
        """Stops the run: the consumer raises ``error`` next."""
        if self._error is None:
            self._error = error
        self._wake_consumer()

    # -- the stages' side ------------------------------------------------------------------

    def fan_out(self, root: int, count: int) -> None:
        """One item of ``root`` became ``count`` items (0: it was filtered out)."""
        alive = self._pending.get(root, 1) - 1 + count
        if alive:
            self._pending[root] = alive
        else:
            self._pending.pop(root, None)
            self._complete(root)

    def output(self, root: int, path: tuple[int, ...], value: Any) -> None:
        """An item left the last stage."""
        self.outputs += 1
        alive = self._pending.pop(root, 1) - 1
        if alive:
            self._pending[root] = alive
        if not self._ordered:
            self._ready.append((root, value, not alive))
            self._wake_consumer()
            return
        held = self._held.get(root)
        if held is None:
            self._held[root] = [(path, value)]
        else:
            held.append((path, value))
        if not alive:
            self._complete(root)

    def drop(self, root: int) -> None:
        """An item went to the dead letters."""
        alive = self._pending.pop(root, 1) - 1
        if alive:
            self._pending[root] = alive
        else:
            self._complete(root)

    def _complete(self, root: int) -> None:
        if not self._ordered:
            # Its outputs so far were taken as not its last; this marker ends it.
            self._ready.append((root, NOTHING, True))
            self._wake_consumer()
            return
        self._finished.add(root)
        if root != self._next:
            return
        finished = self._finished
        while self._next in finished:
            finished.remove(self._next)
            held = self._held.pop(self._next, None)
            if held is None:
                self._ready.append((self._next, NOTHING, True))  # filtered out or failed
            else:
                if len(held) > 1:
                    held.sort(key=_path)
                for position, (_, value) in enumerate(held, 1):
                    self._ready.append((self._next, value, position == len(held)))
            self._next += 1
        self._wake_consumer()

    # -- the consumer's side ---------------------------------------------------------------

    async def take(self) -> deque[tuple[int, Any, bool]] | None:
        """What is ready now, as ``(source index, output, last)``; ``None`` at the end.

        ``last`` marks the end of a source item; an item that ended with no (further)
        output, filtered out or failed, ends with ``(index, NOTHING, True)``.

        Raises:
            BaseException: what stopped the run (see :meth:`fail`).
        """
        while True:
            if self._error is not None:
                raise self._error
            if self._ready:
                ready = self._ready
                self._ready = deque()
                done = sum(1 for _, _, last in ready if last)
                if done:
                    self._delivered(done)
                return ready
            if self._source_done and self.delivered == self.admitted:
                return None
            self._consumer = asyncio.get_running_loop().create_future()
            try:
                await self._consumer
            finally:
                self._consumer = None

    def _delivered(self, count: int) -> None:
        self.delivered += count
        if self._room is not None and not self._room.done():
            self._room.set_result(None)

    def _wake_consumer(self) -> None:
        if self._consumer is not None and not self._consumer.done():
            self._consumer.set_result(None)


def _path(entry: tuple[tuple[int, ...], Any]) -> tuple[int, ...]:
    return entry[0]
