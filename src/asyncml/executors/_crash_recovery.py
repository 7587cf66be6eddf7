"""What happens to a batch whose worker died: the bookkeeping that process and Ray workers
share.

A batch goes to a worker as one :class:`Part`. When the worker dies while running it (a
signal, ``os._exit``, the OOM killer, a killed actor, a batch over its execution timeout),
the part goes back to the queue for a healthy worker: retried whole once, since the death
may have been bad luck, then split in halves, until an item that keeps killing workers
stands alone and fails with :class:`WorkerCrashed` after ``max_attempts`` runs. The parts
of a batch are put back together, so that the batcher's ``done`` is still called exactly
once per batch, with one outcome per item.

Everything here runs on the event loop's thread; the executor decides how parts reach its
workers (``requeue``) and when a worker counts as dead.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .._batch import BatchOutcome
from .._errors import AsyncmlError, Closed, WorkerCrashed
from ._base import BatchDone

#: A replacement worker whose setup() fails this many times in a row is given up.
MAX_FAILED_RESTARTS = 5


def restart_delay(attempt: int) -> float:
    """Seconds to wait before the ``attempt``-th try (from 0) to replace a dead worker."""
    return 0.0 if attempt == 0 else min(5.0, 0.1 * 2**attempt)


@dataclass(slots=True)
class Batch:
    """One batch the batcher submitted; after crashes it may run as several parts."""

    items: Sequence[Any]
    done: BatchDone
    values: list[Any] = field(default_factory=list)
    errors: dict[int, AsyncmlError] = field(default_factory=dict)
    unsettled: int = 0


@dataclass(slots=True)
class Part:
    """A slice of a batch, queued for a worker; ``crashes`` counts the workers it killed."""

    batch: Batch
    start: int
    stop: int
    crashes: int = 0

    @property
    def items(self) -> Sequence[Any]:
        items = self.batch.items
        return items if self.stop - self.start == len(items) else items[self.start : self.stop]

    @property
    def size(self) -> int:
        return self.stop - self.start


class CrashRecovery:
    """Settles parts: their outcomes, their workers' deaths, and failures of the whole pool.

    Args:
        worker: what a worker is, for errors (``"a worker process"``, ``"a Ray actor"``).
        max_attempts: runs an item gets while its worker keeps dying.
        requeue: puts a part back in the executor's queue for another worker.

    Attributes:
        model: the model's name, for errors (set when the executor starts).
        closing: the executor is closing: a part whose worker dies fails with ``Closed``.
        broken: set once no worker is left; every part then fails with it.
    """

    def __init__(self, worker: str, max_attempts: int, requeue: Callable[[Part], None]):
        self.model = "?"
        self._worker = worker
        self.max_attempts = max_attempts
        self._requeue = requeue
        self.closing = False
        self.broken: AsyncmlError | None = None

    def new_part(self, items: Sequence[Any], done: BatchDone) -> Part | None:
        """The part that runs a submitted batch whole; None if the batch already failed
        (the pool is broken)."""
        part = Part(Batch(items, done, unsettled=len(items)), 0, len(items))
        if self.broken is not None:
            self.fail(part, self.broken)
            return None
        return part

    def finished(self, part: Part, outcome: BatchOutcome) -> None:
        """``part`` ran to its end (its items succeeded or failed on their own)."""
        batch = part.batch
        if part.size == len(batch.items) and part.crashes == 0:
            batch.done(outcome)  # the common case: the whole batch, first time
            return
        if not batch.values:
            batch.values = [None] * len(batch.items)
        batch.values[part.start : part.stop] = outcome.values
        for index, error in (outcome.errors or {}).items():
            batch.errors[part.start + index] = error
        batch.unsettled -= part.size
        if batch.unsettled == 0:
            batch.done(BatchOutcome(batch.values, batch.errors or None))

    def crashed(self, part: Part, reason: str) -> None:
        """The worker running ``part`` died; ``reason`` says how (e.g. "killed by SIGKILL")."""
        part.crashes += 1
        if self.closing:
            self.fail(part, self.closed("was closed while the item ran"))
        elif part.size == 1 and part.crashes >= self.max_attempts:
            error = WorkerCrashed(
                f"model {self.model!r}: {self._worker} died running this item on each of "
                f"its {part.crashes} attempts (last: {reason})",
                model=self.model,
                reason=reason,
                attempts=part.crashes,
            )
            self.fail(part, error)
        elif part.size > 1 and part.crashes >= 2:
            # Twice is no accident: split, so that the item to blame ends up alone.
            middle = (part.start + part.stop) // 2
            self.requeue(Part(part.batch, part.start, middle, crashes=1))
            self.requeue(Part(part.batch, middle, part.stop, crashes=1))
        else:
            self.requeue(part)

    def requeue(self, part: Part) -> None:
        """Puts ``part`` back for another worker, or fails it if none is left."""
        if self.broken is not None:
            self.fail(part, self.broken)
        else:
            self._requeue(part)

    def fail(self, part: Part, error: AsyncmlError) -> None:
        """Every item of ``part`` fails with (its own copy of) ``error``."""
        self.finished(part, BatchOutcome.failure(part.size, error))

    def fail_all(self, parts: Iterable[Part], error: AsyncmlError) -> None:
        for part in parts:
            self.fail(part, error)

    def closed(self, when: str) -> Closed:
        """The error of items the executor's close stopped, e.g. ``closed("was closed
        before the item ran")``."""
        return Closed(f"model {self.model!r} {when}", model=self.model)
