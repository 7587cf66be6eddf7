"""A fake clock for asyncio: time stands still while callbacks run and jumps to the next
timer whenever the loop would otherwise wait, so timing tests are exact and instant.

Only timers move the clock. While nothing is scheduled the loop waits for real (for a worker
thread's result), so tests that mix timers with real threads should not use this clock.
"""

from __future__ import annotations

import asyncio
import selectors
from typing import Any


class _JumpingSelector(selectors.DefaultSelector):
    def __init__(self, clock: FakeClockLoop | None = None) -> None:
        super().__init__()
        self.clock = clock

    def select(self, timeout: float | None = None) -> list[tuple[Any, int]]:
        ready: list[tuple[Any, int]] = super().select(0)
        if ready or timeout == 0:
            return ready
        if timeout is None or self.clock is None:
            return super().select(timeout)
        self.clock.advance(timeout)
        return []


class FakeClockLoop(asyncio.SelectorEventLoop):
    """A selector event loop on virtual time starting at 0."""

    def __init__(self) -> None:
        selector = _JumpingSelector()
        super().__init__(selector)
        selector.clock = self
        self._now = 0.0

    def time(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        """Moves the clock forward, as if the loop had been busy or asleep that long."""
        self._now += seconds
