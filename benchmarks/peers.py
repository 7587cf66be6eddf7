"""Hand-written comparison points: the queue batcher people write, and the asyncio floor."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

from workloads import BatchFn

_Entry = tuple[Any, "asyncio.Future[Any]"]


class HandBatcher:
    """A straightforward queue batcher, as a competent engineer writes it in 30 lines.

    One task awaits the first queued item, drains up to ``max_batch_size`` more without
    waiting, runs the batch in a dedicated thread, and sets each caller's future.
    """

    def __init__(self, predict: BatchFn, max_batch_size: int, *, max_queue: int = 1024):
        self._predict = predict
        self._max_batch_size = max_batch_size
        self._queue: asyncio.Queue[_Entry] = asyncio.Queue(max_queue)
        self.batches = 0
        self.items = 0

    async def __call__(self, item: Any) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        await self._queue.put((item, future))
        return await future

    @asynccontextmanager
    async def serving(self) -> AsyncIterator[HandBatcher]:
        """Runs the batching task while the block is entered."""
        async with asyncio.TaskGroup() as group:
            task = group.create_task(self._run())
            try:
                yield self
            finally:
                task.cancel()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        with ThreadPoolExecutor(1) as thread:
            while True:
                batch = [await self._queue.get()]
                while len(batch) < self._max_batch_size and not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                items = [item for item, _ in batch]
                try:
                    outputs = await loop.run_in_executor(thread, self._predict, items)
                except Exception as exc:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                self.batches += 1
                self.items += len(batch)
                for (_, future), output in zip(batch, outputs, strict=True):
                    if not future.done():
                        future.set_result(output)


class BareFutures:
    """The least a per-call asyncio API can cost: one bare future per call, settled in bulk.

    ``submit`` creates a future and queues it; one callback per loop iteration resolves
    everything queued since (with the item itself: the identity model, computed for free).
    """

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._pending: list[_Entry] = []
        self._scheduled = False
        self.batches = 0
        self.items = 0

    def submit(self, item: Any) -> asyncio.Future[Any]:
        """The future of ``item``'s result, resolved on the next loop iteration."""
        future = self._loop.create_future()
        self._pending.append((item, future))
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._resolve)
        return future

    def _resolve(self) -> None:
        pending, self._pending = self._pending, []
        self._scheduled = False
        self.batches += 1
        self.items += len(pending)
        for item, future in pending:
            future.set_result(item)
