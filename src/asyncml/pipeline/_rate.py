"""Rate limit: a token bucket on the loop's clock, for stages that call remote services."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass


@dataclass(frozen=True)
class RateLimit:
    """At most ``per_second`` items per second on average, in bursts of up to ``burst``.

    Attributes:
        per_second: sustained rate.
        burst: items that may start at once after a quiet period.
    """

    per_second: float
    burst: int = 1

    def __post_init__(self) -> None:
        if not self.per_second > 0:
            raise ValueError(f"per_second must be positive, got {self.per_second}")
        if self.burst < 1:
            raise ValueError(f"burst must be at least 1, got {self.burst}")


class TokenBucket:
    """Hands out start times in arrival order (the generic cell rate algorithm).

    Each caller reserves its slot at once and then sleeps until it, so waiters are served
    first come, first served, without a loop that polls.
    """

    def __init__(self, limit: RateLimit):
        self._interval = 1.0 / limit.per_second
        self._tolerance = (limit.burst - 1) * self._interval
        self._next_free = -float("inf")  # the theoretical arrival time of the next item

    def reserve(self, now: float, count: int = 1) -> float:
        """Books ``count`` items (at most the burst); returns how long to wait before
        starting them all at once: until the last of them may start."""
        arrival = max(self._next_free, now)
        self._next_free = arrival + count * self._interval
        last = arrival + (count - 1) * self._interval
        return max(0.0, last - self._tolerance - now)

    async def acquire(self, count: int = 1) -> None:
        delay = self.reserve(asyncio.get_running_loop().time(), count)
        if delay > 0:
            await asyncio.sleep(delay)
