"""Models and sources for tests whose batches are observed and released by the test itself."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Collection, Iterator
from typing import Any


class GatedModel:
    """An async model (``executor="inline"``) that records each batch and, while ``gate``
    is clear, holds it until the test sets the gate. Items in ``poison`` raise."""

    def __init__(self, poison: Collection[Any] = ()) -> None:
        self.batches: list[list[Any]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.started = asyncio.Event()
        self.poison = set(poison)
        self._arrived = asyncio.Event()

    @property
    def seen(self) -> list[Any]:
        return [item for batch in self.batches for item in batch]

    async def wait_batches(self, count: int) -> None:
        """Returns once ``count`` batches have started (the loop may idle meanwhile)."""
        while len(self.batches) < count:
            self._arrived.clear()
            await self._arrived.wait()

    async def __call__(self, batch: list[Any]) -> list[Any]:
        self.batches.append(list(batch))
        self.started.set()
        self._arrived.set()
        await self.gate.wait()
        bad = [item for item in batch if item in self.poison]
        if bad:
            raise ValueError(f"poison {bad[0]!r}")
        return [("out", item) for item in batch]


async def until(predicate: Any, *, limit: int = 10_000) -> None:
    """Lets the loop run until ``predicate()`` holds (fails after ``limit`` iterations)."""
    for _ in range(limit):
        if predicate():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never held")


class Endless:
    """The numbers 0, 1, 2, ... without end, counting how many were taken (``pulled``)."""

    def __init__(self) -> None:
        self.pulled = 0

    def __iter__(self) -> Iterator[int]:
        for number in itertools.count():
            self.pulled += 1
            yield number
