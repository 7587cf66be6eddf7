"""Process workers: for GIL-bound Python models, and for code that may crash its worker.

Each worker is a spawned process holding its own model. The event loop drives them all
without a thread in between: it writes each batch to its worker's pipe and reads the
outcome when it comes (see ``_worker_process``); array buffers cross through shared memory
(see ``_channel``). A worker holds up to two batches: the one it runs and the next, sent
while it runs, so that it never waits for the parent. The loop gives each batch to the
worker that holds the fewest, and the batcher only sends a second one to a busy worker when
it is full (``prefetch``).

A worker that dies (a signal, ``os._exit``, the OOM killer) is noticed the moment its pipe
closes; one that exceeds ``execution_timeout`` is killed. Either way the worker is replaced
and the batch it ran goes back for a healthy worker: retried whole once (the death may have
been bad luck), then split in halves, until an item that keeps killing workers stands alone
and fails with :class:`WorkerCrashed` after ``max_attempts``. A batch it had not started
goes back uncharged. Each worker has a supervising task, which replaces it and stops it.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import pickle
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .._batch import BatchOutcome
from .._errors import AsyncmlError, ModelError, SetupError
from .._model import ModelSpec
from .._shield import wait_shielded
from .._threads import IntraOpThreads, resolve_intra_op_threads
from . import _shm
from ._base import BatchDone, Executor, await_startup, close_failed, require_sync, settle
from ._channel import SLOTS, Unsendable
from ._crash_recovery import MAX_FAILED_RESTARTS, CrashRecovery, Part, restart_delay
from ._worker_process import WorkerProcess

_CLOSED = "was closed before the item ran"


@dataclass(eq=False)
class _Place:
    """One worker's place in the pool, which outlives the processes that fill it."""

    index: int
    worker: WorkerProcess | None = None
    #: Batches given to this place and not sent yet.
    waiting: deque[Part] = field(default_factory=deque)
    #: Batches sent to the worker and not answered yet, oldest (the one it runs) first,
    #: with the slot each takes.
    running: deque[tuple[Part, int]] = field(default_factory=deque)
    #: The worker takes batches (False while it starts, restarts or stops).
    up: bool = False
    #: No worker will fill this place any more.
    gone: bool = False
    #: The execution timeout of the batch the worker runs.
    timer: asyncio.TimerHandle | None = None
    #: Wakes the place's supervisor: its worker died, or the pool closes.
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def load(self) -> int:
        return len(self.waiting) + len(self.running)


class ProcessExecutor(Executor):
    """Runs a synchronous model in ``workers`` processes, one model instance per process.

    The model (class, instance or function) is pickled to each worker, so it must be
    importable: defined at module level, not inside a function. Workers are spawned, so a
    script that starts them needs the usual ``if __name__ == "__main__":`` guard.

    Attributes:
        restarts: how many times a dead worker was replaced.

    Args:
        workers: number of worker processes.
        intra_op_threads: threads each worker's BLAS/OpenMP/torch pools may use: ``"auto"``
            (the cores divided among the workers), an int, or ``None`` to leave them alone.
        max_attempts: runs an item gets when its worker keeps dying, before it fails alone
            with :class:`WorkerCrashed`.
        execution_timeout: seconds a batch may run before its worker is killed (handled
            like a crash); ``None`` for no limit.
    """

    def __init__(
        self,
        workers: int = 1,
        *,
        intra_op_threads: IntraOpThreads = "auto",
        max_attempts: int = 3,
        execution_timeout: float | None = None,
    ):
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be an int >= 1, got {workers!r}")
        if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
            raise ValueError(f"max_attempts must be an int >= 1, got {max_attempts!r}")
        if execution_timeout is not None and not execution_timeout > 0:
            raise ValueError(f"execution_timeout must be > 0 seconds, got {execution_timeout!r}")
        self._workers = workers
        self._pool_threads = resolve_intra_op_threads(intra_op_threads, workers)
        self._execution_timeout = execution_timeout
        self._context = multiprocessing.get_context("spawn")  # safe with threads and torch
        self._places: list[_Place] = []
        self._supervisors: list[asyncio.Task[BaseException | None]] = []  # owned: see aclose
        self._closing = False
        self._graceful = True
        self._recovery = CrashRecovery("a worker process", max_attempts, self._route)
        self._spec: ModelSpec | None = None
        self._pickled_spec = b""
        self.restarts = 0

    @property
    def capacity(self) -> int:
        return self._workers

    @property
    def prefetch(self) -> int:
        return self._workers * (SLOTS - 1)

    @property
    def broken(self) -> AsyncmlError | None:
        """The error every item fails with once no worker is left and none could be
        restarted; ``None`` while the pool can run items."""
        return self._recovery.broken

    def check(self, spec: ModelSpec) -> None:
        require_sync(spec, "process workers")
        try:
            pickle.dumps(spec)
        except Exception as exc:
            raise TypeError(
                f"model {spec.name!r} cannot be sent to a worker process ({exc}); define it "
                "at module level so that it can be pickled"
            ) from exc

    async def start(self, spec: ModelSpec) -> None:
        self._spec = spec
        self._pickled_spec = pickle.dumps(spec)
        self._recovery.model = spec.name
        self._places = [_Place(index) for index in range(self._workers)]
        await asyncio.to_thread(_shm.sweep_orphans)
        loop = asyncio.get_running_loop()
        started = [loop.create_future() for _ in self._places]
        self._supervisors = [
            loop.create_task(self._supervise(place, ready), name=f"asyncml-{spec.name}-{i}")
            for i, (place, ready) in enumerate(zip(self._places, started, strict=True))
        ]
        await await_startup(
            started,
            lambda: self._stop_workers(graceful=False),
            model=spec.name,
            kind="worker process",
            interruptible=True,
        )

    def submit(self, items: Sequence[Any], done: BatchDone) -> None:
        part = self._recovery.new_part(items, done)
        if part is not None:
            self._route(part)

    async def aclose(self, *, graceful: bool) -> None:
        errors = await self._stop_workers(graceful=graceful)
        if errors:
            raise close_failed(self._spec.name if self._spec else "?", errors[0])

    async def _stop_workers(self, *, graceful: bool) -> list[BaseException]:
        """Stops every worker; returns the errors their close() raised."""
        self._closing = self._recovery.closing = True
        self._graceful = self._graceful and graceful
        if not graceful:
            closed = self._recovery.closed(_CLOSED)
            for place in self._places:
                parts, place.waiting = place.waiting, deque()
                self._recovery.fail_all(parts, closed)
                if place.worker is not None:
                    place.worker.kill()  # running batches fail with Closed (see crashed())
        for place in self._places:
            place.wake.set()
        supervisors = asyncio.gather(*self._supervisors)
        await wait_shielded(supervisors)
        return [error for error in supervisors.result() if error is not None]

    # -- routing batches to workers, on the loop -----------------------------------------------

    def _route(self, part: Part) -> None:
        """Gives ``part`` to the running worker that holds the fewest batches (or, while
        none runs, to one that restarts)."""
        if self._closing:  # nothing new would run
            self._recovery.fail(part, self._recovery.closed(_CLOSED))
            return
        place = min(
            (p for p in self._places if not p.gone),
            key=lambda p: (not p.up, p.load),
            default=None,
        )
        if place is None:  # every worker gave up: the pool is broken
            self._recovery.fail(part, self._recovery.broken or self._recovery.closed(_CLOSED))
            return
        place.waiting.append(part)
        self._feed(place)

    def _feed(self, place: _Place) -> None:
        """Sends the place's waiting batches while its worker has room for them."""
        worker = place.worker
        while place.up and place.waiting and len(place.running) < SLOTS:
            assert worker is not None
            part = place.waiting.popleft()
            slot = 1 - place.running[0][1] if place.running else 0
            try:
                worker.send(part.items, slot)
            except Unsendable as refused:
                self._send_picklable(part, refused)
                continue
            place.running.append((part, slot))
            if len(place.running) == 1:
                self._arm(place)

    def _answered(self, place: _Place, outcome: BatchOutcome | Exception) -> None:
        """The worker answered its oldest batch."""
        part, _ = place.running.popleft()
        self._arm(place)
        if isinstance(outcome, Exception):  # its outcome could not be read here
            name = self._recovery.model
            error = ModelError(
                f"model {name!r}: the outcome from the worker process cannot be read: "
                f"{type(outcome).__name__}: {outcome}",
                model=name,
                cause=outcome,
            )
            outcome = BatchOutcome.failure(part.size, error)
        self._recovery.finished(part, outcome)
        self._feed(place)
        if self._closing and not place.load:
            place.wake.set()

    def _lost(self, place: _Place) -> None:
        """The worker's pipe closed while it served: its supervisor takes over."""
        place.up = False
        self._disarm(place)
        place.wake.set()

    def _arm(self, place: _Place) -> None:
        """Starts the execution timeout of the batch the worker runs now, if any."""
        self._disarm(place)
        timeout = self._execution_timeout
        if timeout is not None and place.running and place.worker is not None:
            reason = f"ran over the {timeout} s execution timeout"
            loop = asyncio.get_running_loop()
            place.timer = loop.call_later(timeout, place.worker.kill, reason)

    def _disarm(self, place: _Place) -> None:
        if place.timer is not None:
            place.timer.cancel()
            place.timer = None

    def _send_picklable(self, part: Part, refused: Unsendable) -> None:
        """A batch that does not pickle whole: the items that pickle run as a batch of
        their own, and each other one fails with a ModelError saying why."""
        name = self._recovery.model
        items = part.items
        errors: dict[int, AsyncmlError] = {}
        for position, item in enumerate(items):
            try:
                pickle.dumps(item, protocol=5)
            except Exception as exc:
                errors[position] = _unsendable(name, exc)
        if not errors:  # each item pickles alone, but not the batch
            cause = refused.__cause__ or refused
            self._recovery.fail(part, _unsendable(name, cause))
            return
        if len(errors) == len(items):
            self._recovery.finished(part, BatchOutcome([None] * len(items), errors))
            return
        sendable = [position for position in range(len(items)) if position not in errors]

        def merge(outcome: BatchOutcome) -> None:
            values: list[Any] = [None] * len(items)
            for position, value in zip(sendable, outcome.values, strict=True):
                values[position] = value
            for index, error in (outcome.errors or {}).items():
                errors[sendable[index]] = error
            self._recovery.finished(part, BatchOutcome(values, errors))

        rest = self._recovery.new_part([items[position] for position in sendable], merge)
        if rest is not None:
            self._route(rest)

    # -- supervisors: one task per place --------------------------------------------------

    async def _supervise(
        self, place: _Place, started: asyncio.Future[None]
    ) -> BaseException | None:
        """Starts the place's worker, replaces it each time it dies, and stops it when the
        pool closes; returns what its model's close() raised."""
        try:
            await self._fill(place)
        except BaseException as exc:
            settle(started, exc)
            self._give_up(place, None)
            return None
        settle(started, None)
        while True:
            worker = place.worker
            assert worker is not None
            if worker.lost.done():
                await self._replace(place, worker)
                if place.gone:
                    return None
                continue
            if self._closing and self._graceful and not place.load:
                place.up = False
                return await worker.stop()
            if self._closing and not self._graceful:
                worker.kill()  # again: a restart may have put a new one in its place
            # On the loop's thread nothing changes between the checks above and the wait.
            place.wake.clear()
            await place.wake.wait()

    async def _fill(self, place: _Place) -> None:
        """Starts a worker in ``place``.

        Raises:
            BaseException: it failed to start (see WorkerProcess.start).
        """
        assert self._spec is not None
        worker = place.worker = WorkerProcess(
            self._context,
            f"asyncml-{self._spec.name}-{place.index}",
            self._spec.name,
            self._pickled_spec,
            self._pool_threads,
            lambda outcome: self._answered(place, outcome),
            lambda: self._lost(place),
        )
        if self._closing:  # a stop came before it could start
            worker.kill()
        await worker.start()
        place.up = True
        self._feed(place)

    async def _replace(self, place: _Place, worker: WorkerProcess) -> None:
        """The place's worker died holding ``running``: the batch it ran counts the death,
        the others go back untouched; then a new worker fills the place, with backoff while
        its setup() keeps failing."""
        reason = await worker.ended()
        self._disarm(place)  # outcomes read before it died may have armed it meanwhile
        running, place.running = place.running, deque()
        if running:
            self._recovery.crashed(running.popleft()[0], reason)
        for part, _ in running:
            self._route(part)
        for attempt in range(MAX_FAILED_RESTARTS):
            if self._closing:
                self._give_up(place, None)
                return
            await self._pause(place, restart_delay(attempt))
            try:
                await self._fill(place)
            except Exception:
                continue
            self.restarts += 1
            return
        name = self._recovery.model
        error = SetupError(
            f"model {name!r}: worker process {place.index} died and could not be restarted "
            f"({MAX_FAILED_RESTARTS} failed setups in a row)",
            model=name,
            worker=place.index,
        )
        self._give_up(place, error)

    async def _pause(self, place: _Place, seconds: float) -> None:
        """Waits ``seconds`` before a restart, or less if the pool closes meanwhile."""
        place.wake.clear()
        if seconds and not self._closing:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(seconds):
                    await place.wake.wait()

    def _give_up(self, place: _Place, error: AsyncmlError | None) -> None:
        """No worker will fill ``place`` any more; its batches go to the others, and with
        none left, nothing can run any more."""
        place.gone, place.up = True, False
        none_left = all(p.gone for p in self._places)
        if none_left and not self._closing and error is not None:
            self._recovery.broken = error
        parts, place.waiting = place.waiting, deque()
        for part in parts:
            self._route(part)


def _unsendable(model: str, exc: BaseException) -> ModelError:
    return ModelError(
        f"model {model!r}: the item cannot be sent to a worker process: "
        f"{type(exc).__name__}: {exc}",
        model=model,
        cause=exc,
    )
