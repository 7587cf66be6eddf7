"""The bounded queue in front of a stage.

Items are ``(index, path, value, attempt)`` tuples: ``index`` is the position of the source
item the value descends from, ``path`` orders the outputs of a flat-map stage (``()`` until
one splits the item), ``attempt`` counts tries at the current stage. Producers put whole
chunks, consumers take as many as they can use: the event loop pays per chunk, not per item.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

Item = tuple[int, tuple[int, ...], Any, int]


class Channel:
    """A FIFO of items, bounded at ``capacity`` for producers.

    A chunk is accepted whole once there is any room, so the queue holds at most
    ``capacity`` plus one chunk. Retries re-enter without waiting for room: they were
    already admitted once, and blocking them could deadlock the stage on its own queue.
    The channel ends once its producer closed it, it is empty and no retry is pending.
    """

    def __init__(self, capacity: int):
        if capacity < 1:
            raise ValueError(f"queue capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self._items: deque[Item] = deque()
        self._getters: deque[asyncio.Future[None]] = deque()
        self._putters: deque[asyncio.Future[None]] = deque()
        self._closed = False
        self.retries_pending = 0

    def __len__(self) -> int:
        return len(self._items)

    @property
    def ended(self) -> bool:
        return self._closed and not self._items and self.retries_pending == 0

    async def put(self, chunk: list[Item]) -> None:
        """Appends ``chunk``, first waiting while the queue is full."""
        while len(self._items) >= self.capacity:
            waiter = asyncio.get_running_loop().create_future()
            self._putters.append(waiter)
            try:
                await waiter
            except BaseException:
                waiter.cancel()
                self._wake(self._putters)  # pass the turn on: room may be left
                raise
        self._items.extend(chunk)
        self._wake(self._getters)

    def put_retry(self, item: Item) -> None:
        """Re-enters an item whose retry delay passed (see :meth:`expect_retry`)."""
        self.retries_pending -= 1
        self._items.append(item)
        self._wake(self._getters)

    def expect_retry(self) -> None:
        """Keeps the channel open until the matching :meth:`put_retry`."""
        self.retries_pending += 1

    async def get(self, limit: int) -> list[Item]:
        """Takes 1 to ``limit`` items, waiting while empty; ``[]`` once the channel ended."""
        while not self._items:
            if self.ended:
                return []
            waiter = asyncio.get_running_loop().create_future()
            self._getters.append(waiter)
            try:
                await waiter
            except BaseException:
                waiter.cancel()
                self._wake(self._getters)
                raise
        items = self._items
        if len(items) <= limit:
            taken = list(items)
            items.clear()
        else:
            taken = [items.popleft() for _ in range(limit)]
        self._wake(self._putters)
        if items:
            self._wake(self._getters)  # more left for another consumer
        return taken

    def close(self) -> None:
        """The producer is done: consumers drain what is left, then get ``[]``."""
        self._closed = True
        self._wake_all(self._getters)

    @staticmethod
    def _wake(waiters: deque[asyncio.Future[None]]) -> None:
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    @staticmethod
    def _wake_all(waiters: deque[asyncio.Future[None]]) -> None:
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
