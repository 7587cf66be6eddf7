"""Retry policy: how often, how long to wait, and for which errors."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from .._errors import AsyncmlError, ItemTimeout, ModelError


@dataclass(frozen=True)
class Retry:
    """Retries an item that failed at a stage, with exponential backoff and full jitter.

    ::

        Retry(attempts=5, backoff=0.1, max_backoff=10, on=(ConnectionError, TimeoutError))

    Attempt ``n`` (from 1) waits ``backoff * 2 ** (n - 1)`` seconds (at most
    ``max_backoff``), scaled by a random factor in ``[0, 1)`` when ``jitter``, before the
    next try. An error with a ``retry_after`` attribute (seconds, e.g. from an HTTP 429's
    ``Retry-After``) waits at least that long.

    Attributes:
        attempts: tries in all, the first included (1: no retry).
        backoff: base delay in seconds.
        max_backoff: cap of one delay in seconds.
        jitter: randomise each delay, so retries of many items do not arrive together.
        on: the exception types worth retrying. For work on thread or process workers the
            original exception is matched (by type, or by name where it could not cross
            the process boundary); a deadline that passed matches ``TimeoutError``.
    """

    attempts: int = 3
    backoff: float = 0.1
    max_backoff: float = 10.0
    jitter: bool = True
    on: tuple[type[BaseException], ...] = (Exception,)
    _random: random.Random = field(default_factory=random.Random, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"attempts must be at least 1, got {self.attempts}")
        if self.backoff < 0 or self.max_backoff < 0:
            raise ValueError("backoff and max_backoff must not be negative")

    def retries(self, error: BaseException, attempt: int) -> bool:
        """Whether an item that failed with ``error`` on try ``attempt`` goes again."""
        return attempt < self.attempts and self._matches(error)

    def delay(self, error: BaseException, attempt: int) -> float:
        """Seconds to wait after failed try ``attempt`` (1-based)."""
        delay = min(self.max_backoff, self.backoff * 2 ** (attempt - 1))
        if self.jitter:
            delay *= self._random.random()
        retry_after = getattr(error, "retry_after", None)
        if isinstance(retry_after, int | float) and retry_after > delay:
            return float(retry_after)
        return float(delay)

    def _matches(self, error: BaseException) -> bool:
        if isinstance(error, ModelError):
            if error.cause is not None:
                return isinstance(error.cause, self.on)
            names = {cls.__qualname__ for kind in self.on for cls in _family(kind)}
            return error.cause_type in names
        if isinstance(error, ItemTimeout):
            return any(issubclass(TimeoutError, kind) for kind in self.on)
        if isinstance(error, AsyncmlError):
            return False  # crashes were already retried by the executor; closing is final
        return isinstance(error, self.on)


NO_RETRY = Retry(attempts=1)


def _family(kind: type[BaseException]) -> list[type[BaseException]]:
    """``kind`` and all its subclasses: a name-only cause matches any of them."""
    found = [kind]
    for sub in kind.__subclasses__():
        found.extend(_family(sub))
    return found
