"""One worker process as the event loop sees it: spawned, fed and stopped without blocking
the loop.

The loop writes batches to the worker's pipe and reads their outcomes as they come (see
``_link``); only what may block for long runs in a thread: starting the process (which
writes its start-up data to the child) and reaping it.
"""

from __future__ import annotations

import asyncio
import pickle
import signal
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.context import SpawnContext
from multiprocessing.process import BaseProcess
from typing import Any

from .._batch import BatchOutcome
from .._shield import wait_shielded
from ._channel import ParentChannel, Received, Transfer
from ._link import Link
from ._process_child import serve

#: Bytes of array copies from which a message's copies are made in a thread: the event loop
#: runs on meanwhile (smaller copies cost less than the hand-off).
OFFLOAD = 1 << 20
#: Seconds a worker has to close() and exit, or to exit once its pipe closed, before it is
#: killed.
EXIT_GRACE = 10.0


class WorkerProcess:
    """A spawned process that runs one model instance (see ``_process_child``).

    Args:
        on_outcome: called with each batch's outcome, in the order the batches were sent,
            or with the exception that reading an outcome raised.
        on_lost: called once if the pipe closes while the worker serves: it died, or was
            killed (not when :meth:`stop` closes it).
    """

    def __init__(
        self,
        context: SpawnContext,
        name: str,
        model: str,
        pickled_spec: bytes,
        threads: int | None,
        on_outcome: Callable[[BatchOutcome | Exception], None],
        on_lost: Callable[[], None],
    ):
        self._context = context
        self._name = name
        self._model = model
        self._pickled_spec = pickled_spec
        self._threads = threads
        self._on_outcome = on_outcome
        self._on_lost = on_lost
        self._process: BaseProcess | None = None
        self._link: Link | None = None
        self._channel = ParentChannel()
        loop = asyncio.get_running_loop()
        self._ready: asyncio.Future[tuple[str, Any] | None] = loop.create_future()
        self._closed: asyncio.Future[BaseException | None] | None = None
        self._kill_reason: str | None = None
        self._killed = False
        self._serving = False
        # Batches that wait for their copies into shared memory, or behind one that waits;
        # messages read that wait for an earlier outcome's copies out of it.
        self._outbox: deque[tuple[Transfer, asyncio.Future[None] | None, bytes]] = deque()
        self._inbox: deque[bytes | tuple[asyncio.Future[None], Received]] = deque()
        self._copies: set[asyncio.Future[None]] = set()  # owned: see _dispose
        # One thread makes every large copy: the arrays it allocates come back to it when
        # freed, already paged in (threads taking turns made the copies twice as slow).
        self._copier: ThreadPoolExecutor | None = None
        #: Done once the pipe closed, for whatever reason.
        self.lost: asyncio.Future[None] = loop.create_future()

    async def start(self) -> None:
        """Spawns the process and returns once its model is set up and warmed up.

        Raises:
            ModelError: its ``setup()`` or ``warmup()`` raised.
            Exception: it could not be spawned, or it died first (the message says how).
        """
        ours, theirs = self._context.Pipe()
        process = self._process = self._context.Process(
            target=serve,
            args=(theirs, self._model, self._pickled_spec, self._threads),
            name=self._name,
            daemon=True,
        )
        launching = asyncio.ensure_future(asyncio.to_thread(self._launch, process))
        try:
            await wait_shielded(launching)  # a thread cannot be stopped: know how it ended
        finally:
            theirs.close()
        try:
            launching.result()
        except Exception:  # e.g. spawned from a module with no __main__ guard
            ours.close()
            self._process = None
            raise
        try:
            self._link = await Link.open(ours, self._message, self._pipe_closed)
            answer = await self._ready
        except BaseException:
            self.kill()
            raise
        if answer is None:
            raise RuntimeError(
                f"worker process {await self.ended()} before it was ready (its output says "
                "why; a script that starts process workers needs an "
                "'if __name__ == \"__main__\":' guard)"
            )
        status, detail = answer
        if status != "ready":
            self._link.close()
            await self.ended()
            raise detail
        if self.lost.done():  # it died right after it said it was ready
            raise RuntimeError(f"worker process {await self.ended()} as it became ready")
        self._channel = ParentChannel(shared=detail)
        self._serving = True

    def send(self, items: Sequence[Any], slot: int) -> None:
        """Sends a batch to run in ``slot`` (see ``_channel``); never blocks.

        Raises:
            Unsendable: an item does not pickle; nothing was sent.
        """
        assert self._link is not None
        message, transfer = self._channel.pack(items, slot)
        if transfer.nbytes < OFFLOAD and not self._outbox:
            transfer.run()
            self._link.send(message)
        else:
            offloaded = self._offload(transfer) if transfer.nbytes >= OFFLOAD else None
            self._outbox.append((transfer, offloaded, message))

    def kill(self, reason: str | None = None) -> None:
        """Kills the process (at once, or as soon as it is spawned); ``reason`` becomes what
        :meth:`ended` says."""
        if self._kill_reason is None:
            self._kill_reason = reason
        self._killed = True
        process = self._process
        if process is not None and process.pid is not None:
            process.kill()

    async def ended(self) -> str:
        """Once the pipe closed: reaps the process, frees its shared memory, and says how
        it died ("killed by SIGKILL", "exit code 3", or the reason given to :meth:`kill`)."""
        await self._dispose()
        if self._kill_reason is not None:
            return self._kill_reason
        assert self._process is not None
        return _death(self._process)

    async def stop(self) -> BaseException | None:
        """Asks the worker to run its model's ``close()`` and exit (killing it if it takes
        longer than :data:`EXIT_GRACE`); returns what ``close()`` raised."""
        assert self._link is not None
        closed = self._closed = asyncio.get_running_loop().create_future()
        self._link.send(pickle.dumps(None))
        await asyncio.wait((closed, self.lost), timeout=EXIT_GRACE, return_when="FIRST_COMPLETED")
        self._link.close()
        await self._dispose()
        return closed.result() if closed.done() else None

    # -- helpers ------------------------------------------------------------------------------

    def _launch(self, process: BaseProcess) -> None:
        """Starts ``process`` (in a thread: it writes the child's start-up data)."""
        process.start()
        if self._killed:  # killed while it was being started
            process.kill()

    async def _dispose(self) -> None:
        """Reaps the process and removes the names of its segments (files: in a thread),
        once no copy touches them any more."""
        if self._copies:
            await wait_shielded(asyncio.gather(*self._copies, return_exceptions=True))
        await wait_shielded(asyncio.ensure_future(asyncio.to_thread(self._dispose_now)))

    def _dispose_now(self) -> None:
        if self._copier is not None:
            self._copier.shutdown()
        if self._process is not None:
            _reap(self._process)
        self._channel.close()

    def _offload(self, transfer: Transfer) -> asyncio.Future[None]:
        if self._copier is None:
            self._copier = ThreadPoolExecutor(1, thread_name_prefix=f"{self._name}-copies")
        copying = asyncio.get_running_loop().run_in_executor(self._copier, transfer.run)
        self._copies.add(copying)
        copying.add_done_callback(self._copied)
        return copying

    def _copied(self, copying: asyncio.Future[None]) -> None:
        self._copies.discard(copying)
        self._flush()
        self._read()

    def _flush(self) -> None:
        """Sends the batches whose copies are made, in the order they came."""
        outbox = self._outbox
        while outbox:
            transfer, copying, message = outbox[0]
            if copying is not None and not copying.done():
                return
            outbox.popleft()
            if copying is None:
                transfer.run()
            elif (error := copying.exception()) is not None:
                outbox.clear()
                self.kill(f"could not copy a batch into shared memory: {error!r}")
                return
            assert self._link is not None
            self._link.send(message)

    def _message(self, message: bytes) -> None:
        self._inbox.append(message)
        if len(self._inbox) == 1:
            self._read()

    def _read(self) -> None:
        """Handles the messages read, in order; an outcome with large arrays to copy out of
        shared memory holds the rest back while a thread copies them."""
        inbox = self._inbox
        while inbox:
            head = inbox[0]
            if not isinstance(head, bytes):
                copying, copied = head
                if not copying.done():
                    return
                inbox.popleft()
                error = copying.exception()
                if isinstance(error, Exception):
                    self._on_outcome(error)
                else:
                    self._deliver(copied)
                continue
            received = self._take(head)
            if received is not None and received.transfer.nbytes >= OFFLOAD:
                inbox[0] = (self._offload(received.transfer), received)
                return
            inbox.popleft()
            if received is not None:
                received.transfer.run()
                self._deliver(received)

    def _take(self, message: bytes) -> Received | None:
        """Reads a message; returns it if it is an outcome."""
        if not self._ready.done():  # ("ready", shared arrays mappable) or ("failed", error)
            self._ready.set_result(pickle.loads(message))
        elif self._closed is not None:  # ("closed", what close() raised)
            if not self._closed.done():
                self._closed.set_result(pickle.loads(message)[1])
        else:
            assert self._link is not None
            try:
                return self._channel.take(message, self._link.send)
            except Exception as exc:
                self._on_outcome(exc)
        return None

    def _deliver(self, received: Received) -> None:
        try:
            outcome = received.outcome()
        except Exception as exc:
            self._on_outcome(exc)
        else:
            self._on_outcome(outcome)

    def _pipe_closed(self) -> None:
        if not self._ready.done():
            self._ready.set_result(None)
        if not self.lost.done():
            self.lost.set_result(None)
            if self._serving and self._closed is None:
                self._on_lost()


def _reap(process: BaseProcess) -> None:
    """Joins ``process``, killing it if it outstays :data:`EXIT_GRACE`."""
    process.join(EXIT_GRACE)
    if process.is_alive():
        process.kill()
        process.join()


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
