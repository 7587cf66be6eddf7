"""Process workers: for GIL-bound Python models, and for code that may crash its worker.

Each worker is a spawned process holding its own model, driven by a thread of ours that
sends it one batch at a time over a pipe and waits for the answer, so the event loop never
blocks on a pipe; array buffers cross through shared memory (see ``_channel``). A worker
that dies (a signal, ``os._exit``, the OOM killer) is noticed the moment its pipe closes;
one that exceeds ``execution_timeout`` is killed. Either way the worker is replaced and its
batch goes back to the queue for a healthy worker: retried whole once (the death may have
been bad luck), then split in halves, until an item that keeps killing workers stands alone
and fails with :class:`WorkerCrashed` after ``max_attempts``.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import pickle
import queue
import signal
import threading
import time
from collections.abc import Sequence
from functools import partial
from multiprocessing.process import BaseProcess
from typing import Any

from .._batch import BatchOutcome
from .._errors import AsyncmlError, ModelError, SetupError
from .._model import ModelSpec
from .._threads import IntraOpThreads, resolve_intra_op_threads
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
from ._channel import ParentChannel, Unsendable
from ._crash_recovery import MAX_FAILED_RESTARTS, CrashRecovery, Part, restart_delay
from ._process_child import serve

#: Seconds a worker has to close() and exit before it is killed.
_EXIT_GRACE = 10.0


class _Crash(Exception):
    """The worker died (or was killed) while it held a part; ``reason`` says how."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


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
        self._parts: queue.SimpleQueue[Part | None] = queue.SimpleQueue()
        self._drivers: list[threading.Thread] = []
        self._started: list[asyncio.Future[None]] = []
        self._stopped: list[asyncio.Future[None]] = []
        self._processes: list[BaseProcess | None] = []
        self._alive = 0
        self._closing = False
        self._recovery = CrashRecovery("a worker process", max_attempts, self._parts.put)
        self._spec: ModelSpec | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.restarts = 0

    @property
    def capacity(self) -> int:
        return self._workers

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
        self._recovery.model = spec.name
        self._loop = loop = asyncio.get_running_loop()
        self._started = [loop.create_future() for _ in range(self._workers)]
        self._stopped = [loop.create_future() for _ in range(self._workers)]
        self._processes = [None] * self._workers
        self._alive = self._workers
        await start_worker_threads(
            self._drivers,
            self._drive,
            self._started,
            partial(self._stop_workers, graceful=False),
            model=spec.name,
            kind="worker process",
        )

    def submit(self, items: Sequence[Any], done: BatchDone) -> None:
        part = self._recovery.new_part(items, done)
        if part is not None:
            self._parts.put(part)

    async def aclose(self, *, graceful: bool) -> None:
        errors = await self._stop_workers(graceful=graceful)
        if errors:
            raise close_failed(self._spec.name if self._spec else "?", errors[0])

    async def _stop_workers(self, *, graceful: bool) -> list[BaseException]:
        """Stops every worker and its driver; returns the errors their close() raised."""
        self._closing = self._recovery.closing = True
        if not graceful:
            closed = self._recovery.closed("was closed before the item ran")
            self._recovery.fail_all(drain(self._parts), closed)
            for process in self._processes:
                if process is not None:
                    process.kill()  # running batches fail with Closed (see CrashRecovery.crashed)
        for _ in self._drivers:
            self._parts.put(None)
        errors = await join_workers(self._drivers, self._stopped)
        self._drivers = []
        return errors

    # -- the loop's side ----------------------------------------------------------------------

    def _lost_worker(self, error: AsyncmlError) -> None:
        """A worker slot gave up restarting; with none left, nothing can run any more."""
        self._alive -= 1
        if self._alive == 0 and not self._closing:
            self._recovery.broken = error
            self._recovery.fail_all(drain(self._parts), error)

    # -- a driver thread's side: one worker process -----------------------------------------

    def _drive(self, index: int) -> None:
        loop, spec = self._loop, self._spec
        assert loop is not None
        assert spec is not None
        close_error: BaseException | None = None
        try:
            channel = self._spawn(index, spec, self._started[index], loop)
            while channel is not None and (part := self._parts.get()) is not None:
                try:
                    outcome = self._run(index, channel, part.items)
                except _Crash as crash:
                    channel.close()
                    loop.call_soon_threadsafe(self._recovery.crashed, part, crash.reason)
                    channel = self._respawn(index, spec, loop)  # at once, not when work comes
                else:
                    loop.call_soon_threadsafe(self._recovery.finished, part, outcome)
            if channel is not None:
                close_error = self._stop(index, channel)
        finally:
            loop.call_soon_threadsafe(settle, self._stopped[index], close_error)

    def _spawn(
        self,
        index: int,
        spec: ModelSpec,
        started: asyncio.Future[None] | None,
        loop: asyncio.AbstractEventLoop,
    ) -> ParentChannel | None:
        """Starts worker ``index``; returns its channel once it is ready, or None if it failed."""
        ours, theirs = self._context.Pipe()
        process = self._context.Process(
            target=serve,
            args=(theirs, spec, self._pool_threads),
            name=f"asyncml-{spec.name}-{index}",
            daemon=True,
        )
        try:
            process.start()
        except Exception as exc:  # e.g. spawned from a module with no __main__ guard
            ours.close()
            theirs.close()
            if started is not None:
                loop.call_soon_threadsafe(settle, started, exc)
            return None
        theirs.close()
        self._processes[index] = process
        try:
            status, error = ours.recv()
        except (EOFError, OSError):
            process.join()
            status, error = (
                "failed",
                RuntimeError(
                    f"worker process {_death(process)} before it was ready (its output says why; "
                    "a script that starts process workers needs an "
                    "'if __name__ == \"__main__\":' guard)"
                ),
            )
        if status == "ready":
            if started is not None:
                loop.call_soon_threadsafe(settle, started, None)
            return ParentChannel(ours)
        ours.close()
        process.join()
        self._processes[index] = None
        if started is not None:
            loop.call_soon_threadsafe(settle, started, error)
        return None

    def _respawn(
        self, index: int, spec: ModelSpec, loop: asyncio.AbstractEventLoop
    ) -> ParentChannel | None:
        """Replaces a dead worker, backing off while its setup() keeps failing."""
        for attempt in range(MAX_FAILED_RESTARTS):
            if self._closing:
                return None
            time.sleep(restart_delay(attempt))  # a driver thread: the loop runs on
            channel = self._spawn(index, spec, None, loop)
            if channel is not None:
                self.restarts += 1
                return channel
        error = SetupError(
            f"model {spec.name!r}: worker process {index} died and could not be restarted "
            f"({MAX_FAILED_RESTARTS} failed setups in a row)",
            model=spec.name,
            worker=index,
        )
        loop.call_soon_threadsafe(self._lost_worker, error)
        return None

    def _run(self, index: int, channel: ParentChannel, items: Sequence[Any]) -> BatchOutcome:
        process = self._processes[index]
        assert process is not None
        try:
            return channel.exchange(items, self._execution_timeout)
        except Unsendable as unsendable:
            return self._run_sendable(index, channel, items, unsendable)
        except TimeoutError:
            process.kill()
            process.join()
            raise _Crash(f"ran over the {self._execution_timeout} s execution timeout") from None
        except (EOFError, OSError):
            process.join()
            raise _Crash(_death(process)) from None

    def _run_sendable(
        self, index: int, channel: ParentChannel, items: Sequence[Any], unsendable: Unsendable
    ) -> BatchOutcome:
        """Runs the items that pickle; each other one fails with a ModelError saying why."""
        name = self._spec.name if self._spec else "?"
        errors: dict[int, AsyncmlError] = {}
        for position, item in enumerate(items):
            try:
                pickle.dumps(item, protocol=5)
            except Exception as exc:
                errors[position] = _unsendable(name, exc)
        if not errors:  # each item pickles alone, but not the batch
            cause = unsendable.__cause__ or unsendable
            return BatchOutcome.failure(len(items), _unsendable(name, cause))
        sendable = [position for position in range(len(items)) if position not in errors]
        values: list[Any] = [None] * len(items)
        if sendable:
            outcome = self._run(index, channel, [items[position] for position in sendable])
            for position, value in zip(sendable, outcome.values, strict=True):
                values[position] = value
            for part_index, error in (outcome.errors or {}).items():
                errors[sendable[part_index]] = error
        return BatchOutcome(values, errors)

    def _stop(self, index: int, channel: ParentChannel) -> BaseException | None:
        """Asks worker ``index`` to close() and exit; returns what its close() raised."""
        process = self._processes[index]
        assert process is not None
        conn = channel.conn
        error: BaseException | None = None
        try:
            conn.send(None)
            if conn.poll(_EXIT_GRACE):
                _, error = conn.recv()
        except (EOFError, OSError):
            pass  # it died on its way out: nothing left to close
        channel.close()
        process.join(_EXIT_GRACE)
        if process.is_alive():
            process.kill()
            process.join()
        self._processes[index] = None
        return error


def _unsendable(model: str, exc: BaseException) -> ModelError:
    return ModelError(
        f"model {model!r}: the item cannot be sent to a worker process: "
        f"{type(exc).__name__}: {exc}",
        model=model,
        cause=exc,
    )


def _death(process: BaseProcess) -> str:
    code = process.exitcode
    if code is None:
        return "stopped answering"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"
