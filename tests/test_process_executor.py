"""Process workers with real processes and real signals: every item gets one outcome, an item
that kills its worker fails alone, and no process outlives its block."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import subprocess
import sys
import threading
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
from numpy.testing import assert_array_equal  # imported lazily, it would block the loop

import asyncml
from asyncml.executors import ProcessExecutor
from tests import process_models as models
from tests.helpers import until


def worker_processes() -> list[psutil.Process]:
    """Our child processes, less multiprocessing's resource tracker: one per program, it
    lives until the program exits (and cleans up after it)."""
    return [
        child
        for child in psutil.Process().children(recursive=True)
        if "resource_tracker" not in " ".join(child.cmdline())
    ]


@pytest.fixture(autouse=True)
def no_leaked_processes() -> object:
    yield None
    leaked = worker_processes()
    assert not leaked, f"worker processes outlived the test: {leaked}"


async def test_workers_are_other_processes_that_set_up_once(tmp_path: Path) -> None:
    log = tmp_path / "setups.log"
    async with asyncml.load(models.CountsSetups(str(log)), executor="process", workers=2) as m:
        assert await m.map(range(500)) == list(range(500))
    async with asyncml.load(models.pids, executor="process", workers=2) as m:
        seen = set(await m.map(range(200)))
    assert os.getpid() not in seen
    assert len((await asyncio.to_thread(log.read_text)).split()) == 2


async def test_arrays_cross_to_workers_and_back() -> None:
    rows = [np.arange(6, dtype=np.float32) + i for i in range(300)]
    async with asyncml.load(models.doubled_rows, executor="process", workers=2) as m:
        results = await m.map(rows)
    for row, result in zip(rows, results, strict=True):
        assert_array_equal(result, row * 2)
        assert result.dtype == np.float32


async def test_a_stacked_batch_crosses_as_one_array_both_ways() -> None:
    rows = [np.arange(6, dtype=np.float32) + i for i in range(300)]
    rows[123] = -rows[123]  # fails its batch: the halves must still split right
    async with asyncml.load(models.DoublesStacked, executor="process", workers=2) as m:
        results = await m.map(rows, return_exceptions=True)
    for index, (row, result) in enumerate(zip(rows, results, strict=True)):
        if index == 123:
            assert isinstance(result, asyncml.ModelError)
        else:
            assert isinstance(result, np.ndarray)
            assert_array_equal(result, row * 2)
            assert result.dtype == np.float32
    # The worker hands the model the batch it received, not a copy stacked again.
    async with asyncml.load(models.ReportsCopies, executor="process", max_batch_size=64) as m:
        copied = await m.map([np.ones(4) for _ in range(200)])
    assert not any(copied)


async def test_killing_workers_at_random_loses_nothing() -> None:
    rng = random.Random(0)
    pool = ProcessExecutor(2)
    async with asyncml.load(models.triple_steadily, executor=pool, max_batch_size=16) as m:
        run = asyncio.ensure_future(m.map(range(10_000)))
        for _ in range(10):  # a kill every 25 batches
            target = m.statistics().batches + 25
            await until(lambda t=target: m.statistics().batches >= t or run.done(), limit=10**8)
            workers = await asyncio.to_thread(worker_processes)  # reads /proc
            if run.done() or not workers:
                break
            with contextlib.suppress(ProcessLookupError):  # it may have just been replaced
                os.kill(rng.choice(workers).pid, signal.SIGKILL)
        results = await run
        stats = m.statistics()
    assert results == [3 * x for x in range(10_000)]
    assert stats.completed == stats.submitted == 10_000
    assert pool.restarts >= 1


@pytest.mark.parametrize(
    ("model", "reason"),
    [(models.exit_on_13, "exit code 3"), (models.segfault_on_13, "killed by SIGSEGV")],
)
async def test_an_item_that_kills_its_worker_fails_alone(
    model: Callable[[list[int]], list[int]], reason: str
) -> None:
    async with asyncml.load(model, executor="process", workers=2, max_batch_size=8) as m:
        results = await m.map(range(40), return_exceptions=True)
    error = results[13]
    assert isinstance(error, asyncml.WorkerCrashed)
    assert error.reason == reason
    assert error.attempts == 3
    assert reason in str(error)
    assert [r for i, r in enumerate(results) if i != 13] == [3 * x for x in range(40) if x != 13]


async def test_an_item_that_cannot_be_pickled_fails_alone() -> None:
    async with asyncml.load(models.identity, executor="process", max_batch_size=8) as m:
        results = await m.map([1, threading.Lock(), 3], return_exceptions=True)
    assert results[0] == 1
    assert results[2] == 3
    assert isinstance(results[1], asyncml.ModelError)
    assert "cannot be sent to a worker process" in str(results[1])


async def test_an_outcome_the_parent_cannot_read_fails_its_batch_and_the_worker_goes_on() -> None:
    async with asyncml.load(models.unreadable_outputs_for_negatives, executor="process") as m:
        with pytest.raises(asyncml.ModelError, match="cannot be read: ValueError: this output"):
            await m(-1)
        assert await m.map([1, 2, 3]) == [1, 2, 3]
        assert m.statistics().failed == 1


async def test_outputs_that_cannot_cross_fail_their_items_and_no_worker_dies() -> None:
    async with asyncml.load(
        models.callbacks_for_negatives, executor="process", max_batch_size=4
    ) as m:
        results = await m.map([1, -2, 3], return_exceptions=True)
        assert results[0::2] == [1, 3]
        assert isinstance(results[1], asyncml.ModelError)
        assert "output cannot be sent back from the worker process" in str(results[1])
        assert m.statistics().worker_restarts == 0


async def test_an_input_that_does_not_unpickle_in_the_worker_fails_its_batch_alone() -> None:
    async with asyncml.load(models.identity, executor="process") as m:
        with pytest.raises(asyncml.ModelError, match="cannot be read in the worker process"):
            await m(models.ReadableInParentOnly())
        assert await m.map([1, 2]) == [1, 2]
        assert m.statistics().worker_restarts == 0


async def test_a_hung_batch_is_killed_after_the_execution_timeout() -> None:
    pool = ProcessExecutor(2, execution_timeout=0.5)
    async with asyncml.load(models.hang_on_13, executor=pool, max_batch_size=2) as m:
        results = await m.map([12, 13, 14], return_exceptions=True)
    assert results[0] == 36
    assert results[2] == 42
    assert isinstance(results[1], asyncml.WorkerCrashed)
    assert "execution timeout" in str(results[1])


async def test_a_batch_waiting_behind_a_hung_one_runs_on_the_replacement() -> None:
    pool = ProcessExecutor(1, execution_timeout=0.5, max_attempts=1)
    async with asyncml.load(models.hang_on_13, executor=pool, max_batch_size=1) as m:
        # [14] is a full batch: it is sent ahead to the worker stuck on [13].
        results = await m.map([13, 14], return_exceptions=True)
    assert isinstance(results[0], asyncml.WorkerCrashed)
    assert "execution timeout" in str(results[0])
    assert results[1] == 42  # not charged with the death of the worker it waited in
    assert pool.restarts == 1


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="one core: every pool has one thread")
async def test_libraries_a_model_loads_late_get_the_thread_limit_too() -> None:
    # scipy starts its BLAS pool with a thread per core unless the limit reaches it.
    async with asyncml.load(models.late_blas_threads, executor="process", intra_op_threads=1) as m:
        assert await m(0) == 1


async def test_a_failing_setup_is_a_start_up_error() -> None:
    with pytest.raises(asyncml.SetupError, match="FileNotFoundError: no weights"):
        async with asyncml.load(models.FailsSetup, executor="process", workers=2):
            pytest.fail("must not start")


async def test_a_model_its_worker_cannot_import_is_a_start_up_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A module that lives only in the parent's memory: pickled by name, then not found.
    ghost = types.ModuleType("ghost_models")
    exec("def double(batch):\n    return [2 * x for x in batch]\n", ghost.__dict__)
    monkeypatch.setitem(sys.modules, "ghost_models", ghost)
    with pytest.raises(asyncml.SetupError, match="No module named 'ghost_models'"):
        async with asyncml.load(ghost.double, executor="process"):
            pytest.fail("must not start")


async def test_leaving_on_an_error_kills_running_batches() -> None:
    pool = ProcessExecutor(1)
    with pytest.raises(KeyError):
        async with asyncml.load(models.hang_on_13, executor=pool) as m:
            stuck = asyncio.ensure_future(m(13))
            await until(lambda: m.statistics().in_flight == 1)
            raise KeyError("stop")
    assert isinstance(stuck.exception(), asyncml.Closed)


def test_a_model_that_cannot_reach_a_process_is_refused() -> None:
    def local(batch: list[int]) -> list[int]:
        return batch

    with pytest.raises(TypeError, match="define it at module level"):
        asyncml.load(local, executor="process")
    with pytest.raises(TypeError, match="executor='inline'"):
        asyncml.load(models_async, executor="process")


async def models_async(batch: list[int]) -> list[int]:
    return batch


@pytest.mark.parametrize("state", ["idle", "busy"])
def test_workers_exit_when_their_parent_is_killed(state: str) -> None:
    root = Path(__file__).parents[1]
    with subprocess.Popen(
        [sys.executable, str(root / "tests" / "scripts" / "orphaned.py"), state],
        stdout=subprocess.PIPE,
        text=True,
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
    ) as parent:
        assert parent.stdout is not None
        family = psutil.Process(parent.pid)
        workers = [psutil.Process(int(pid)) for pid in parent.stdout.readline().split()]
        assert len(workers) == 2
        if state == "busy":  # the other two workers are inside batches that never end
            assert parent.stdout.readline().strip() == "busy"
            workers = [p for p in family.children() if "resource_tracker" not in p.cmdline()[-1]]
            assert len(workers) == 4
        parent.kill()
        parent.wait(timeout=10)
    _, alive = psutil.wait_procs(workers, timeout=10)
    assert not alive, f"orphaned workers: {alive}"
    assert not list(Path("/dev/shm").glob(f"asyncml-{parent.pid}-*"))


def test_workers_run_on_uvloop() -> None:
    """``asyncml serve`` runs on uvloop, whose transports do not subclass asyncio's."""
    import uvloop

    async def run() -> tuple[list[Any], Any, list[int], int]:
        pool = ProcessExecutor(1)
        async with asyncml.load(models.doubled_rows, executor=pool) as m:
            rows = await m.map([np.arange(6.0) + i for i in range(100)])
            large = await m(np.ones((1024, 512)))  # 4 MB: shared memory and the copier thread
            (worker,) = worker_processes()
            worker.kill()
            after = await m.map([np.zeros(2) + i for i in range(3)])
        return rows, large, [int(row[0]) for row in after], pool.restarts

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        rows, large, after, restarts = runner.run(run())
    assert [int(row[0]) for row in rows] == [2 * i for i in range(100)]
    assert_array_equal(large, np.full((1024, 512), 2.0))
    assert (after, restarts) == ([0, 2, 4], 1)


async def test_cancelling_a_start_kills_workers_still_in_setup() -> None:
    loop = asyncio.get_running_loop()
    began = loop.time()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.5), asyncml.load(models.SlowSetup, executor="process"):
            pass
    assert loop.time() - began < 30  # not the minute the setup would have taken
