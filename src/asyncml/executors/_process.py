"""Process workers: for GIL-bound Python models, and for code that may crash its worker.

Each worker is a spawned process holding its own model, driven by a thread of ours that
sends it batches over a pipe and waits for the answers, so the event loop never blocks on a
pipe; array buffers cross through shared memory (see ``_channel``). A worker holds up to two
batches: the one it runs and the next, sent (and copied) while it runs, so that it never
waits for the parent. The event loop gives each batch to the worker that holds the fewest,
and the batcher only sends a second one to a busy worker when it is full (``prefetch``).

A worker that dies (a signal, ``os._exit``, the OOM killer) is noticed the moment its pipe
closes; one that exceeds ``execution_timeout`` is killed. Either way the worker is replaced
and the batch it ran goes back for a healthy worker: retried whole once (the death may have
been bad luck), then split in halves, until an item that keeps killing workers stands alone
and fails with :class:`WorkerCrashed` after ``max_attempts``. A batch it had not started
goes back uncharged.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import pickle
import queue
import signal
import threading
import time
from collections import deque
from collections.abc import Sequence
from functools import partial
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from typing import Any

from .._batch import BatchOutcome
from .._errors import AsyncmlError, ModelError, SetupError
from .._model import ModelSpec
from .._threads import IntraOpThreads, resolve_intra_op_threads
from . import _shm
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
from ._channel import SLOTS, ParentChannel, Unsendable
from ._crash_recovery import MAX_FAILED_RESTARTS, CrashRecovery, Part, restart_delay
from ._process_child import serve

#: Seconds a worker has to close() and exit before it is killed.
_EXIT_GRACE = 10.0
_CLOSED = "was closed before the item ran"
#: Batches sent to a worker and not answered yet, the one it runs first, with their slots.
_Running = deque[tuple[Part, int]]


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
        # Per worker: the batches given to it, the pipe that wakes its driver when one comes
        # while the worker runs another, how many it holds (queued or sent; the loop's
        # count), whether it runs (False while it restarts), and whether it gave up.
        self._inboxes: list[queue.SimpleQueue[Part | None]] = []
        self._wakes: list[tuple[int, int]] = []
        self._load: list[int] = []
        self._up: list[bool] = []
        self._gone: list[bool] = []
        self._drivers: list[threading.Thread] = []
        self._started: list[asyncio.Future[None]] = []
        self._stopped: list[asyncio.Future[None]] = []
        self._processes: list[BaseProcess | None] = []
        self._alive = 0
        self._closing = False
        self._recovery = CrashRecovery("a worker process", max_attempts, self._route)
        self._spec: ModelSpec | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
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
        self._recovery.model = spec.name
        self._loop = loop = asyncio.get_running_loop()
        self._started = [loop.create_future() for _ in range(self._workers)]
        self._stopped = [loop.create_future() for _ in range(self._workers)]
        self._processes = [None] * self._workers
        self._alive = self._workers
        self._inboxes = [queue.SimpleQueue() for _ in range(self._workers)]
        self._wakes = []
        for _ in range(self._workers):
            read, write = os.pipe()
            os.set_blocking(read, False)
            os.set_blocking(write, False)
            self._wakes.append((read, write))
        self._load = [0] * self._workers
        self._up = [True] * self._workers
        self._gone = [False] * self._workers
        await asyncio.to_thread(_shm.sweep_orphans)
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
            self._route(part)

    async def aclose(self, *, graceful: bool) -> None:
        errors = await self._stop_workers(graceful=graceful)
        if errors:
            raise close_failed(self._spec.name if self._spec else "?", errors[0])

    async def _stop_workers(self, *, graceful: bool) -> list[BaseException]:
        """Stops every worker and its driver; returns the errors their close() raised."""
        self._closing = self._recovery.closing = True
        if not graceful:
            closed = self._recovery.closed(_CLOSED)
            for index in range(len(self._inboxes)):
                self._recovery.fail_all(self._take_inbox(index), closed)
            for process in self._processes:
                if process is not None:
                    process.kill()  # running batches fail with Closed (see CrashRecovery.crashed)
        for inbox in self._inboxes:
            inbox.put(None)
        errors = await join_workers(self._drivers, self._stopped)
        self._drivers = []
        for read, write in self._wakes:
            os.close(read)
            os.close(write)
        self._wakes = []
        return errors

    # -- the loop's side ----------------------------------------------------------------------

    def _route(self, part: Part) -> None:
        """Gives ``part`` to the running worker that holds the fewest batches (or, while
        none runs, to one that restarts)."""
        if self._closing:  # the drivers are told to stop: nothing new would run
            self._recovery.fail(part, self._recovery.closed(_CLOSED))
            return
        index = min(
            (i for i, gone in enumerate(self._gone) if not gone),
            key=lambda i: (not self._up[i], self._load[i]),
            default=None,
        )
        if index is None:  # every worker gave up: the pool is broken
            self._recovery.fail(part, self._recovery.broken or self._recovery.closed(_CLOSED))
            return
        self._load[index] += 1
        self._inboxes[index].put(part)
        if self._load[index] > 1:  # its driver may be waiting on the worker: wake it
            with contextlib.suppress(BlockingIOError):  # a full pipe wakes it all the same
                os.write(self._wakes[index][1], b"\0")

    def _take_inbox(self, index: int) -> list[Part]:
        parts = list(drain(self._inboxes[index]))
        self._load[index] -= len(parts)
        return parts

    def _finished(self, index: int, part: Part, outcome: BatchOutcome) -> None:
        self._load[index] -= 1
        self._recovery.finished(part, outcome)

    def _crashed(self, index: int, part: Part, reason: str) -> None:
        self._load[index] -= 1
        self._up[index] = False
        self._recovery.crashed(part, reason)

    def _not_started(self, index: int, part: Part) -> None:
        """``part`` was sent to a worker that died before it could run it: it goes to
        another worker, and the death does not count against its items."""
        self._load[index] -= 1
        self._route(part)

    def _restarted(self, index: int) -> None:
        self._up[index] = True

    def _lost_worker(self, index: int, error: AsyncmlError | None) -> None:
        """Worker ``index`` is gone for good (it could not be restarted, or the pool closes);
        its batches go to the others, and with none left, nothing can run any more."""
        self._gone[index] = True
        self._alive -= 1
        if self._alive == 0 and not self._closing and error is not None:
            self._recovery.broken = error
        for part in self._take_inbox(index):
            self._route(part)

    # -- a driver thread's side: one worker process -----------------------------------------

    def _drive(self, index: int) -> None:
        loop, spec = self._loop, self._spec
        assert loop is not None
        assert spec is not None
        close_error: BaseException | None = None
        try:
            channel = self._spawn(index, spec, self._started[index], loop)
            if channel is not None:
                channel = self._feed(index, channel, spec, loop)
            if channel is not None:
                close_error = self._stop(index, channel)
        finally:
            loop.call_soon_threadsafe(settle, self._stopped[index], close_error)

    def _feed(
        self, index: int, channel: ParentChannel, spec: ModelSpec, loop: asyncio.AbstractEventLoop
    ) -> ParentChannel | None:
        """Runs worker ``index``'s batches until it is told to stop; returns its channel, or
        None once the worker is gone for good."""
        inbox, wake = self._inboxes[index], self._wakes[index][0]
        running: _Running = deque()
        head_since = 0.0  # when the batch at the head of running started to run
        stopping = False
        unsendable: tuple[Part, Unsendable] | None = None
        live: ParentChannel | None = channel
        while live is not None:
            # Send what waits, up to SLOTS batches; wait for work only with none running.
            while not stopping and unsendable is None and len(running) < SLOTS:
                try:
                    part = inbox.get(block=not running)
                except queue.Empty:
                    break
                if part is None:
                    stopping = True
                    break
                slot = 1 - running[0][1] if running else 0
                try:
                    live.send(part.items, slot)
                except Unsendable as refused:
                    unsendable = (part, refused)  # runs once the worker has nothing else
                    break
                except OSError:  # the worker is dead; the oldest batch it had is to blame
                    running.append((part, slot))
                    live = self._replace(index, live, spec, loop, running, self._how_it_died(index))
                    break
                if not running:
                    head_since = time.monotonic()
                running.append((part, slot))
            if live is None:
                break
            if not running:
                if unsendable is not None:
                    live = self._run_unsendable(index, live, spec, loop, *unsendable)
                    unsendable = None
                    continue
                if stopping:
                    break
                continue
            # Wait for the oldest batch's outcome, or for another batch to send.
            timeout = self._execution_timeout
            if timeout is not None:
                timeout = max(0.0, head_since + timeout - time.monotonic())
            sending = not stopping and unsendable is None and len(running) < SLOTS
            ready = wait([live.conn, wake] if sending else [live.conn], timeout)
            if wake in ready:
                with contextlib.suppress(BlockingIOError):
                    os.read(wake, 4096)
            if not ready or live.conn in ready:
                try:
                    outcome = live.receive(timeout)
                except TimeoutError:
                    live = self._replace(index, live, spec, loop, running, self._timed_out(index))
                except (EOFError, OSError):
                    live = self._replace(index, live, spec, loop, running, self._how_it_died(index))
                else:
                    part, _ = running.popleft()
                    head_since = time.monotonic()
                    loop.call_soon_threadsafe(self._finished, index, part, outcome)
        return live

    def _run_unsendable(
        self,
        index: int,
        channel: ParentChannel,
        spec: ModelSpec,
        loop: asyncio.AbstractEventLoop,
        part: Part,
        unsendable: Unsendable,
    ) -> ParentChannel | None:
        """Runs a batch that does not pickle whole, the worker holding nothing else."""
        try:
            outcome = self._run_sendable(index, channel, part.items, unsendable)
        except _Crash as crash:
            return self._replace(index, channel, spec, loop, deque([(part, 0)]), crash.reason)
        loop.call_soon_threadsafe(self._finished, index, part, outcome)
        return channel

    def _replace(
        self,
        index: int,
        channel: ParentChannel,
        spec: ModelSpec,
        loop: asyncio.AbstractEventLoop,
        running: _Running,
        reason: str,
    ) -> ParentChannel | None:
        """Worker ``index`` died (``reason`` says how) holding ``running``: the batch it ran
        counts the death, the others go back untouched; returns its replacement's channel."""
        channel.close()
        part, _ = running.popleft()
        loop.call_soon_threadsafe(self._crashed, index, part, reason)
        for waiting, _ in running:
            loop.call_soon_threadsafe(self._not_started, index, waiting)
        running.clear()
        replacement = self._respawn(index, spec, loop)  # at once, not when work comes
        if replacement is not None:
            loop.call_soon_threadsafe(self._restarted, index)
        return replacement

    def _how_it_died(self, index: int) -> str:
        """How worker ``index``, whose pipe broke, died."""
        process = self._processes[index]
        assert process is not None
        process.join()
        return _death(process)

    def _timed_out(self, index: int) -> str:
        """Kills worker ``index``, whose batch ran over the execution timeout."""
        process = self._processes[index]
        assert process is not None
        process.kill()
        process.join()
        return f"ran over the {self._execution_timeout} s execution timeout"

    def _spawn(
        self,
        index: int,
        spec: ModelSpec,
        started: asyncio.Future[None] | None,
        loop: asyncio.AbstractEventLoop,
    ) -> ParentChannel | None:
        """Starts worker ``index``; returns its channel once it is ready, or None if it failed."""
        ours, theirs = self._context.Pipe()
        try:
            process = self._context.Process(
                target=serve,
                args=(theirs, spec.name, pickle.dumps(spec), self._pool_threads),
                name=f"asyncml-{spec.name}-{index}",
                daemon=True,
            )
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
            status, detail = ours.recv()  # ("ready", shared arrays mappable) or ("failed", error)
        except (EOFError, OSError):
            process.join()
            status, detail = (
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
            return ParentChannel(ours, shared=detail)
        ours.close()
        process.join()
        self._processes[index] = None
        if started is not None:
            loop.call_soon_threadsafe(settle, started, detail)
        return None

    def _respawn(
        self, index: int, spec: ModelSpec, loop: asyncio.AbstractEventLoop
    ) -> ParentChannel | None:
        """Replaces a dead worker, backing off while its setup() keeps failing."""
        for attempt in range(MAX_FAILED_RESTARTS):
            if self._closing:
                loop.call_soon_threadsafe(self._lost_worker, index, None)
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
        loop.call_soon_threadsafe(self._lost_worker, index, error)
        return None

    def _run(self, index: int, channel: ParentChannel, items: Sequence[Any]) -> BatchOutcome:
        """Runs one batch, the worker holding nothing else.

        Raises:
            _Crash: the worker died, or was killed for running over the execution timeout.
        """
        try:
            return channel.exchange(items, self._execution_timeout)
        except Unsendable as unsendable:
            return self._run_sendable(index, channel, items, unsendable)
        except TimeoutError:
            raise _Crash(self._timed_out(index)) from None
        except (EOFError, OSError):
            raise _Crash(self._how_it_died(index)) from None

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
