"""The executor interface: what the batcher needs from a pool of workers, and nothing more.

Above this line nothing knows where model code runs. An executor owns its workers (threads,
processes, actors): it starts them (each builds its own model and runs ``setup()``), runs
one batch per free worker, and stops them. The batcher never has more than ``capacity``
batches outstanding (plus ``prefetch`` full ones), so ``submit`` always finds a place.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any, TypeVar

from .._batch import BatchOutcome
from .._errors import AsyncmlError, SetupError
from .._model import ModelSpec
from .._shield import wait_shielded

#: Called exactly once per submitted batch, on the event loop's thread.
BatchDone = Callable[[BatchOutcome], None]

_Job = TypeVar("_Job")


class Executor(ABC):
    """A pool of workers that each hold a model instance and run one batch at a time."""

    @property
    @abstractmethod
    def capacity(self) -> int:
        """How many batches may run at once (usually the number of workers)."""

    @property
    def prefetch(self) -> int:
        """How many more batches the pool takes, beyond ``capacity``, to send ahead to busy
        workers; the batcher gives it only full ones. ``0`` unless sending a batch costs the
        parent time that a worker's run could hide (process workers copy arrays)."""
        return 0

    @property
    def broken(self) -> AsyncmlError | None:
        """The error every item fails with once the pool can run nothing any more (every
        worker died and none could be replaced); ``None`` while it can run items.

        Models' statistics report it, and ``asyncml serve`` turns a broken model's readiness
        to 503. The default suits executors whose workers cannot die; one that replaces dead
        workers returns the error once it gives up.
        """
        return None

    @abstractmethod
    def check(self, spec: ModelSpec) -> None:
        """Raises ``TypeError`` if this executor cannot run ``spec``; called before ``start``."""

    @abstractmethod
    async def start(self, spec: ModelSpec) -> None:
        """Starts the workers; returns once each ran ``setup()`` and ``warmup()``.

        Raises:
            SetupError: a worker's ``setup()`` or ``warmup()`` raised; no worker is left
                running.
        """

    @abstractmethod
    def submit(self, items: Sequence[Any], done: BatchDone) -> None:
        """Runs one batch on a free worker and later calls ``done(outcome)``.

        Must not block and must not raise: a failure becomes the outcome of the batch's
        items. ``done`` runs on the event loop's thread, exactly once, also when the
        executor is closed while the batch runs.
        """

    @abstractmethod
    async def aclose(self, *, graceful: bool) -> None:
        """Stops every worker (running ``close()`` in each) and returns when none is left.

        Graceful: submitted batches finish first. Otherwise batches that can be stopped are
        stopped (their items fail with ``Closed``); a thread cannot be interrupted, so a
        batch already running in one still finishes. Every outstanding ``done`` has been
        called when this returns.
        """


def close_failed(model: str, error: BaseException) -> AsyncmlError:
    """The error an executor's ``aclose`` raises when a worker's ``close()`` failed."""
    failure = AsyncmlError(
        f"model {model!r}: close() failed in a worker: {type(error).__name__}: {error}",
        model=model,
    )
    failure.__cause__ = error
    return failure


def settle(future: asyncio.Future[None], error: BaseException | None) -> None:
    """Resolves a worker's start or stop signal (on the loop, via ``call_soon_threadsafe``)."""
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)


async def await_startup(
    started: Sequence[asyncio.Future[None]],
    stop_all: Callable[[], Awaitable[object]],
    *,
    model: str,
    kind: str,
    interruptible: bool = False,
) -> None:
    """Waits until every worker signalled its start; if one failed, or the wait is
    cancelled, stops them all first (no worker is left running).

    A cancellation waits for the setups still running, since a thread cannot be
    interrupted; with ``interruptible`` (workers that ``stop_all`` kills: processes) it
    stops them at once, so Ctrl-C does not wait out a model that loads for minutes.

    Raises:
        SetupError: a worker's setup() or warmup() failed.
    """
    setups = asyncio.gather(*started, return_exceptions=True)
    try:
        if interruptible:
            await asyncio.shield(setups)
        else:
            await wait_shielded(setups)
    except asyncio.CancelledError:
        await stop_all()
        setups.cancel()  # what has not started never will
        raise
    failures = [(i, r) for i, r in enumerate(setups.result()) if isinstance(r, BaseException)]
    if failures:
        await stop_all()
        worker, cause = failures[0]
        raise SetupError(
            f"model {model!r} failed to start in {kind} {worker}: {type(cause).__name__}: {cause}",
            model=model,
            worker=worker,
        ) from cause


async def start_worker_threads(
    threads: list[threading.Thread],
    target: Callable[[int], object],
    started: Sequence[asyncio.Future[None]],
    stop_all: Callable[[], Awaitable[object]],
    *,
    model: str,
    kind: str,
) -> None:
    """Starts one daemon thread per start signal in ``started``, the ``index``-th running
    ``target(index)`` as ``asyncml-<model>-<index>``, then waits as :func:`await_startup`.

    ``threads`` is filled with them before the first starts, so that ``stop_all`` finds
    every one.

    Raises:
        SetupError: a worker's setup() or warmup() failed.
    """
    threads[:] = [
        threading.Thread(
            target=target,
            args=(index,),
            name=f"asyncml-{model}-{index}",
            daemon=True,  # a hung predict() must not keep a killed program alive
        )
        for index in range(len(started))
    ]
    for thread in threads:
        thread.start()
    await await_startup(started, stop_all, model=model, kind=kind)


async def join_workers(
    threads: Sequence[threading.Thread], stopped: Sequence[asyncio.Future[None]]
) -> list[BaseException]:
    """Waits for every worker thread's stop signal, then joins it; returns the errors the
    signals carried (their models' close() failures)."""
    stops = asyncio.gather(*stopped, return_exceptions=True)
    await wait_shielded(stops)
    for thread in threads:
        thread.join()  # each signalled its end as its last act: this returns at once
    return [r for r in stops.result() if isinstance(r, BaseException)]


def require_sync(spec: ModelSpec, workers: str) -> None:
    """Raises ``TypeError`` if the model has async methods, which ``workers`` cannot run."""
    if spec.is_async:
        raise TypeError(
            f"model {spec.name!r} has an async predict(); {workers} run synchronous code: "
            "use executor='inline'"
        )
    if spec.async_lifecycle:
        raise TypeError(
            f"model {spec.name!r} has an async setup(), warmup() or close(); {workers} run "
            "synchronous code: make them plain methods, or use executor='inline'"
        )


def drain(jobs: queue.SimpleQueue[_Job | None]) -> Iterator[_Job]:
    """Takes every job still waiting in ``jobs`` (stop markers are dropped)."""
    while True:
        try:
            job = jobs.get_nowait()
        except queue.Empty:
            return
        if job is not None:
            yield job
