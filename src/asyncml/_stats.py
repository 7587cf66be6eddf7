"""Frozen snapshots of what a model has done, for people, progress bars and metrics."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class LatencySummary:
    """Latency percentiles in milliseconds over a window of recent samples."""

    count: int
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float

    @classmethod
    def of(cls, seconds: Iterable[float]) -> LatencySummary:
        """Summarises samples given in seconds."""
        ordered = sorted(seconds)
        if not ordered:
            return cls(0, 0.0, 0.0, 0.0, 0.0, 0.0)

        def pick(q: float) -> float:
            return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3

        mean = sum(ordered) / len(ordered) * 1e3
        return cls(len(ordered), mean, pick(0.5), pick(0.9), pick(0.99), ordered[-1] * 1e3)


@dataclass(frozen=True, slots=True)
class ModelStatistics:
    """A snapshot of one loaded model.

    Every submitted item ends in exactly one of ``completed``, ``failed``, ``timed_out`` or
    ``cancelled``, or is still ``queued`` or ``in_flight``, so these always add up to
    ``submitted``.
    """

    model: str
    workers: int
    submitted: int
    completed: int
    failed: int
    timed_out: int
    cancelled: int
    queued: int
    in_flight: int
    batches: int
    #: batch size -> number of batches of that size
    batch_sizes: Mapping[int, int]
    #: submission to outcome, over the most recent items
    latency: LatencySummary
    #: dead worker processes replaced so far (executors that restart workers; else 0)
    worker_restarts: int = 0
    #: no worker is left and none could be restarted: every item fails (executors that
    #: restart workers; else always False)
    broken: bool = False

    @property
    def mean_batch_size(self) -> float:
        """Items per batch, on average (0 before the first batch)."""
        items = sum(size * count for size, count in self.batch_sizes.items())
        return items / self.batches if self.batches else 0.0
