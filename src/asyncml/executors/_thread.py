"""Thread workers: for models that release the GIL (numpy, torch, scikit-learn) or wait on I/O.

Each worker thread builds its own model, runs ``setup()`` and ``warmup()`` there, and then
takes batches from one shared queue. Results come back to the event loop with one
``call_soon_threadsafe`` per batch, never per item.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Sequence
from functools import partial
from typing import Any

from .._batch import BatchOutcome, run_batch
from .._errors import Closed, ModelError
from .._model import ModelSpec
from .._threads import IntraOpLimit, IntraOpThreads, resolve_intra_op_threads
from ._base import (
    BatchDone,
    Executor,
    close_failed,
    drain,
    join_workers,
    require_sync,
    settle,
    start_worker_threads,
)

_Job = tuple[Sequence[Any], BatchDone] | None


class ThreadExecutor(Executor):
    """Runs a synchronous model in ``workers`` threads, one model instance per thread.

    Args:
        workers: number of threads (and model instances).
        intra_op_threads: threads each worker's BLAS/OpenMP/torch pools may use: ``"auto"``
            (the cores divided among the workers), an int, or ``None`` to leave them alone.
    """

    def __init__(self, workers: int = 1, *, intra_op_threads: IntraOpThreads = "auto"):
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be an int >= 1, got {workers!r}")
        self._workers = workers
        self._pool_threads = resolve_intra_op_threads(intra_op_threads, workers)
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._started: list[asyncio.Future[None]] = []
        self._stopped: list[asyncio.Future[None]] = []
        self._limits: list[IntraOpLimit] = []
        self._name = "?"

    @property
    def capacity(self) -> int:
        return self._workers

    def check(self, spec: ModelSpec) -> None:
        require_sync(spec, "thread workers")

    async def start(self, spec: ModelSpec) -> None:
        loop = asyncio.get_running_loop()
        self._name = spec.name
        self._limits = [IntraOpLimit(self._pool_threads) for _ in range(self._workers)]
        self._started = [loop.create_future() for _ in range(self._workers)]
        self._stopped = [loop.create_future() for _ in range(self._workers)]
        await start_worker_threads(
            self._threads,
            partial(self._work, spec, loop),
            self._started,
            partial(self._stop_workers, graceful=False),
            model=spec.name,
            kind="thread worker",
        )

    def submit(self, items: Sequence[Any], done: BatchDone) -> None:
        self._jobs.put((items, done))

    async def aclose(self, *, graceful: bool) -> None:
        errors = await self._stop_workers(graceful=graceful)
        if errors:
            raise close_failed(self._name, errors[0])

    async def _stop_workers(self, *, graceful: bool) -> list[BaseException]:
        """Stops every thread; returns the errors their models' close() raised."""
        if not graceful:
            self._fail_waiting_jobs()
        for _ in self._threads:
            self._jobs.put(None)
        errors = await join_workers(self._threads, self._stopped)
        self._threads = []
        # Put the thread pools back once every worker is gone, with the library handles
        # taken at apply time: no file reads on the loop.
        for limit in self._limits:
            limit.release()
        return errors

    def _fail_waiting_jobs(self) -> None:
        closed = f"model {self._name!r} was closed before the item ran"
        for items, done in drain(self._jobs):
            done(BatchOutcome.failure(len(items), Closed(closed, model=self._name)))

    def _work(self, spec: ModelSpec, loop: asyncio.AbstractEventLoop, index: int) -> None:
        started, stopped = self._started[index], self._stopped[index]
        limit = self._limits[index]
        model = None
        set_up = False  # close() releases what setup() acquired, also if warmup() fails
        close_error: BaseException | None = None
        try:
            try:
                model = spec.create()
                model.setup()
                set_up = True
                limit.apply()
                model.warmup()
            except BaseException as exc:
                loop.call_soon_threadsafe(settle, started, exc)
                return
            loop.call_soon_threadsafe(settle, started, None)
            while (job := self._jobs.get()) is not None:
                items, done = job
                try:
                    outcome = run_batch(model, spec, items)
                except BaseException as exc:  # e.g. SystemExit raised by the model's code
                    error = ModelError.from_exception(exc, model=spec.name)
                    outcome = BatchOutcome.failure(len(items), error)
                limit.cover_new_libraries()  # before the next call can reach a worker
                loop.call_soon_threadsafe(done, outcome)
        finally:
            if model is not None and set_up:
                try:
                    model.close()
                except BaseException as exc:
                    close_error = exc
            loop.call_soon_threadsafe(settle, stopped, close_error)
