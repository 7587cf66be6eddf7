"""How late the event loop runs its callbacks: the symptom of code that blocks it."""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass
from types import TracebackType

from ._stats import LatencySummary


@dataclass(frozen=True, slots=True)
class LoopLagStatistics:
    """Lag samples of a :class:`LoopLagMonitor`: how late a timer fired, in milliseconds."""

    samples: int
    lag: LatencySummary


class LoopLagMonitor:
    """Measures event-loop lag while it is entered; usable on its own.

    A timer is set every ``interval`` seconds; the lag is how much later than asked it
    fires. A loop that never blocks shows lags well under a millisecond.

    Example::

        async with asyncml.LoopLagMonitor(interval=0.01) as lag:
            await work()
        print(lag.statistics().lag.p99_ms)
    """

    def __init__(self, interval: float = 0.05, *, window: int = 10_000):
        if not interval > 0:
            raise ValueError(f"interval must be > 0 seconds, got {interval!r}")
        self._interval = interval
        self._lags: deque[float] = deque(maxlen=window)
        self._samples = 0
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> LoopLagMonitor:
        if self._task is not None:
            raise RuntimeError("LoopLagMonitor is already running")
        self._task = asyncio.get_running_loop().create_task(self._measure())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            # Our own cancel() ended the task; a cancellation of this task still propagates.
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise

    async def _measure(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            asked = loop.time() + self._interval
            await asyncio.sleep(self._interval)
            self._lags.append(max(0.0, loop.time() - asked))
            self._samples += 1

    def statistics(self) -> LoopLagStatistics:
        """Lag percentiles over the most recent samples."""
        return LoopLagStatistics(self._samples, LatencySummary.of(self._lags))
