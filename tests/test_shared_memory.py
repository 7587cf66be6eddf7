"""Arrays cross to process workers through shared memory, and no segment outlives its use:
not after a clean close, not after a worker or the parent is SIGKILLed mid-batch.

Checked against the real /dev/shm: segments are named ``asyncml-<parent pid>-...``, and a
process that maps one shows it in /proc/<pid>/maps, marked "(deleted)" once its name is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from multiprocessing import Pipe
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
from numpy.testing import assert_array_equal

import asyncml
from asyncml.executors import BatchOutcome, _channel, _shm
from asyncml.executors._channel import ParentChannel, WorkerChannel
from asyncml.executors._shm import Segment
from tests import process_models as models
from tests.test_process_executor import no_leaked_processes  # noqa: F401  (autouse)

pytestmark = pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="needs /dev/shm")

ROOT = Path(__file__).parents[1]


def shm_names(parent_pid: int) -> list[str]:
    """The names in /dev/shm of segments created by process ``parent_pid``."""
    return sorted(path.name for path in Path("/dev/shm").glob(f"asyncml-{parent_pid}-*"))


def mapped_segments(pid: int) -> set[str]:
    """The asyncml segments process ``pid`` maps, as /proc/<pid>/maps names them."""
    lines = Path(f"/proc/{pid}/maps").read_text().splitlines()
    return {line.split(maxsplit=5)[5] for line in lines if "/dev/shm/asyncml-" in line}


@contextlib.asynccontextmanager
async def batch_holder(hold: int) -> AsyncIterator[tuple[int, asyncio.Queue[int]]]:
    """A server for :class:`models.HoldsBatches`: yields its port and a queue of the pids of
    the workers whose batches arrived; holds the first ``hold`` batches until the block
    ends (or their worker dies) and lets the others go at once."""
    arrived: asyncio.Queue[int] = asyncio.Queue()
    held: list[asyncio.StreamWriter] = []

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        arrived.put_nowait(int(await reader.readline()))
        if len(held) < hold:
            held.append(writer)
        else:
            writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    try:
        async with server:
            yield server.sockets[0].getsockname()[1], arrived
    finally:
        for writer in held:
            writer.close()


@pytest.mark.parametrize("model", [models.identity, models.doubled_rows])
async def test_large_arrays_cross_intact_and_the_outputs_are_the_callers_own(
    model: Callable[[list[Any]], list[Any]],
) -> None:
    rng = np.random.default_rng(0)
    first = [rng.random((1000, 1000)) for _ in range(3)]
    second = [rng.random((1000, 1000)) for _ in range(3)]
    factor = 2 if model is models.doubled_rows else 1
    async with asyncml.load(model, executor="process", max_batch_size=3) as m:
        outputs = await m.map(first)
        outputs += await m.map(second)  # through the same segments as the first batches
    for array, output in zip(first + second, outputs, strict=True):
        assert_array_equal(output, array * factor)
        assert output.flags.writeable
    assert not await asyncio.to_thread(shm_names, os.getpid())


async def test_inputs_a_model_keeps_are_not_overwritten_by_later_batches() -> None:
    arrays = [np.full((300, 300), float(i)) for i in range(8)]
    async with asyncml.load(models.KeepsInputs, executor="process", max_batch_size=2) as m:
        assert await m.map(arrays) == [True] * 8
    assert not await asyncio.to_thread(shm_names, os.getpid())


async def test_killing_a_worker_mid_batch_leaves_no_shared_memory() -> None:
    arrays = [np.full((1000, 1000), float(i)) for i in range(4)]
    async with batch_holder(hold=1) as (port, arrived):
        model = models.HoldsBatches(port)
        async with asyncml.load(model, executor="process", max_batch_size=4) as m:
            run = asyncio.ensure_future(m.map(arrays))
            worker = await asyncio.wait_for(arrived.get(), timeout=30)
            # Mid-batch: the worker maps the batch's segment, whose name is already gone.
            mapped = await asyncio.to_thread(mapped_segments, worker)
            assert mapped
            assert all(name.endswith("(deleted)") for name in mapped)
            assert not await asyncio.to_thread(shm_names, os.getpid())
            os.kill(worker, signal.SIGKILL)
            results = await run  # retried on a new worker
            assert m.statistics().completed == 4
    for array, result in zip(arrays, results, strict=True):
        assert_array_equal(result, array)
    assert not await asyncio.to_thread(shm_names, os.getpid())


async def eventually(condition: Callable[[], bool], limit: float = 30.0) -> None:
    """Returns once ``condition()`` (checked off the loop) holds; fails after ``limit`` s."""
    deadline = asyncio.get_running_loop().time() + limit
    while not await asyncio.to_thread(condition):
        assert asyncio.get_running_loop().time() < deadline, "condition never held"
        await asyncio.sleep(0.02)


async def test_a_batch_sent_ahead_to_a_worker_that_dies_runs_on_its_replacement() -> None:
    arrays = [np.full((300, 300), float(i)) for i in range(3)]
    pool = asyncml.executors.ProcessExecutor(1, max_attempts=1)
    async with batch_holder(hold=1) as (port, arrived):
        model = models.HoldsBatches(port)
        async with asyncml.load(model, executor=pool, max_batch_size=1) as m:
            run = asyncio.ensure_future(m.map(arrays, return_exceptions=True))
            worker = await asyncio.wait_for(arrived.get(), timeout=30)
            # While the first batch runs, the next (full) one is already in the worker's
            # other segment, whose name stays until the worker maps it.
            await eventually(lambda: len(shm_names(os.getpid())) == 1)
            os.kill(worker, signal.SIGKILL)
            results = await run
    # The batch the worker ran had its one attempt; the one it had not started is not
    # charged with the death: it runs on the replacement, as does the third.
    assert isinstance(results[0], asyncml.WorkerCrashed)
    assert results[0].reason == "killed by SIGKILL"
    for array, result in zip(arrays[1:], results[1:], strict=True):
        assert_array_equal(result, array)
    assert pool.restarts == 1
    assert not await asyncio.to_thread(shm_names, os.getpid())


def test_killing_the_parent_mid_batch_leaves_no_shared_memory() -> None:
    with subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "scripts" / "killed_mid_batch.py")],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    ) as parent:
        assert parent.stdout is not None
        parent_pid, worker_pid = (int(pid) for pid in parent.stdout.readline().split())
        worker = psutil.Process(worker_pid)
        assert mapped_segments(worker_pid)  # the batch is in shared memory
        parent.kill()
        parent.wait(timeout=10)
    _, alive = psutil.wait_procs([worker], timeout=10)
    assert not alive, f"orphaned worker: {alive}"
    assert not shm_names(parent_pid)


# -- the channel on its own: both ends in this process, the worker's on a thread -----------


class BlockingParent:
    """The parent's end over a blocking pipe, as a test drives it: what the process
    executor does from the event loop, one call at a time."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.codec = ParentChannel()

    def send(self, items: Sequence[Any], slot: int) -> None:
        packed = self.codec.pack(items, slot)
        packed.transfer.run()
        self.conn.send_bytes(packed.message)

    def receive(self, timeout: float | None) -> BatchOutcome:
        while True:
            if not self.conn.poll(timeout):
                raise TimeoutError
            received = self.codec.take(self.conn.recv_bytes(), self.conn.send_bytes)
            if received is not None:
                received.transfer.run()
                return received.outcome()

    def exchange(self, items: Sequence[Any], timeout: float | None) -> BatchOutcome:
        self.send(items, 0)
        return self.receive(timeout)

    def close(self) -> None:
        self.codec.close()
        self.conn.close()


@contextlib.contextmanager
def channel(run: Callable[[Sequence[Any]], BatchOutcome]) -> Any:
    """A parent's channel to a worker thread that answers each batch with ``run``."""
    ours, theirs = Pipe()
    worker = WorkerChannel(theirs, "model")

    def serve() -> None:
        while (frame := worker.receive()) is not None:
            worker.answer(frame, run)

    thread = threading.Thread(target=serve)
    thread.start()
    parent = BlockingParent(ours)
    try:
        yield parent
    finally:
        ours.send(None)
        thread.join()
        parent.close()
        theirs.close()


def doubled(items: Sequence[Any]) -> BatchOutcome:
    return BatchOutcome([item * 2 for item in items])


def test_only_the_pickle_stream_crosses_the_pipe_for_large_arrays() -> None:
    arrays = [np.ones((500, 500)), np.ones(10_000, dtype=np.int32)]
    segment = Segment.create(2**21)
    _shm.unlink(segment.name)
    stream, buffers, _ = _channel._encode(arrays, _channel._nowhere, lambda size: (0, segment))
    assert len(stream) < 1_000
    assert all(isinstance(buffer, _channel._Slice) for buffer in buffers)
    segment.close()


def test_small_payloads_travel_in_the_message() -> None:
    def reserve(size: int) -> tuple[int, Segment]:
        pytest.fail("shared memory is not even asked for")

    _, buffers, _ = _channel._encode([np.ones(100)] * 10, _channel._nowhere, reserve)
    assert not any(isinstance(buffer, _channel._Slice) for buffer in buffers)


def test_without_room_in_shared_memory_arrays_take_the_pipe(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def full(size: int) -> Segment:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Segment, "create", full)
    arrays = [np.arange(100_000.0), np.arange(100_000.0) + 1]
    with channel(doubled) as parent:
        outcome = parent.exchange(arrays, timeout=None)
    for array, value in zip(arrays, outcome.values, strict=True):
        assert_array_equal(value, array * 2)


def test_a_batch_sent_ahead_waits_while_the_worker_asks_for_a_segment() -> None:
    first, second = [np.arange(100_000.0)], [np.arange(100_000.0) + 1]
    with channel(doubled) as parent:
        parent.send(first, 0)
        parent.send(second, 1)  # reaches the worker while it waits for its response segment
        answers = [parent.receive(timeout=None), parent.receive(timeout=None)]
    for items, outcome in zip([first, second], answers, strict=True):
        assert_array_equal(outcome.values[0], items[0] * 2)
    assert not shm_names(os.getpid())


def test_a_segment_whose_worker_never_mapped_it_is_removed_on_close() -> None:
    ours, theirs = Pipe()
    parent = BlockingParent(ours)
    with pytest.raises(TimeoutError):
        parent.exchange([np.ones((300, 300))], timeout=0)  # no worker reads it
    assert len(shm_names(os.getpid())) == 1
    parent.close()
    theirs.close()
    assert not shm_names(os.getpid())


async def test_names_left_by_a_parent_killed_with_its_worker_go_when_a_pool_starts() -> None:
    # A parent and its worker SIGKILLed together, between a segment's creation and the
    # worker mapping it, leave its name behind: nobody is left to remove it.
    done = await asyncio.create_subprocess_exec(sys.executable, "-c", "pass")
    await done.wait()  # its pid is free now, and not soon reused
    left = Path(f"/dev/shm/asyncml-{done.pid}-0123456789abcdef")
    mine = Path(f"/dev/shm/asyncml-{os.getpid()}-0123456789abcdef")  # a live parent's
    fresh = Path(f"/dev/shm/asyncml-{done.pid}-fedcba9876543210")  # maybe on its way
    for path in (left, mine, fresh):
        await asyncio.to_thread(path.write_bytes, b"\0" * 4096)
    long_ago = time.time() - _shm.ORPHAN_AGE_S - 1
    for path in (left, mine):
        await asyncio.to_thread(os.utime, path, (long_ago, long_ago))
    try:
        async with asyncml.load(models.triple, executor="process") as m:
            assert await m(2) == 6
        assert not await asyncio.to_thread(left.exists)
        assert await asyncio.to_thread(mine.exists)
        assert await asyncio.to_thread(fresh.exists)
    finally:
        for path in (left, mine, fresh):
            await asyncio.to_thread(path.unlink, missing_ok=True)
