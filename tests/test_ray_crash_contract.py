"""What every executor whose workers can die promises, checked on process workers and on Ray
actors alike: one outcome per item, an item that kills its worker fails alone, a worker
killed mid-run loses nothing, a failing setup() is a start-up error, and a pool whose dead
workers cannot be replaced is broken."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import signal
from collections import deque
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

import asyncml
from asyncml.executors import Executor, ProcessExecutor, RayExecutor
from tests import process_models, ray_models
from tests.ray_session import child_processes, ray_local, ray_session  # noqa: F401

#: How each kind of worker says that it died by ``os._exit(3)``: a process worker is our
#: child, so we read its exit status; Ray reports only that its actor's process died.
EXIT_3_REASON = {
    "process": re.compile(r"exit code 3"),
    "ray": re.compile(r"actor process \d+ on \S+ died"),
}


@pytest.fixture(autouse=True)
def no_leaked_worker_processes() -> Iterator[None]:
    yield
    _, alive = psutil.wait_procs(child_processes("spawn_main"), timeout=10)
    assert not alive, f"worker processes outlived the test: {alive}"


@pytest.fixture(params=["process", "ray"])
def kind(request: pytest.FixtureRequest) -> str:
    if request.param == "ray":
        request.getfixturevalue("ray_local")
    return str(request.param)


def pool(kind: str, workers: int = 2) -> Executor:
    if kind == "process":
        return ProcessExecutor(workers)
    return RayExecutor(workers, num_cpus=0.5)


async def test_every_item_gets_one_outcome(kind: str) -> None:
    model = ray_models.fails_on_multiples_of_7
    async with asyncml.load(model, executor=pool(kind), max_batch_size=8) as m:
        results = await m.map(range(500), return_exceptions=True)
        stats = m.statistics()
    for x, result in enumerate(results):
        if x % 7 == 0:
            assert isinstance(result, asyncml.ModelError)
            assert result.cause_type == "ValueError"
        else:
            assert result == 3 * x
    assert stats.submitted == stats.completed + stats.failed == 500


async def test_an_item_that_kills_its_worker_fails_alone(kind: str) -> None:
    model = process_models.exit_on_13
    async with asyncml.load(model, executor=pool(kind), max_batch_size=8) as m:
        results = await m.map(range(40), return_exceptions=True)
    error = results[13]
    assert isinstance(error, asyncml.WorkerCrashed)
    assert error.attempts == 3
    assert error.reason is not None
    assert EXIT_3_REASON[kind].search(error.reason), error.reason
    assert error.reason in str(error)
    assert [r for i, r in enumerate(results) if i != 13] == [3 * x for x in range(40) if x != 13]


async def test_killing_workers_mid_run_loses_nothing(kind: str) -> None:
    rng = random.Random(0)
    executor = pool(kind)
    results: dict[int, int] = {}
    recent: deque[int] = deque(maxlen=32)  # pids of workers that answered lately
    killed: set[int] = set()
    model = ray_models.tripled_with_pid
    async with asyncml.load(model, executor=executor, max_batch_size=16) as m:
        async for index, (value, pid) in m.as_completed(range(3_000)):
            results[index] = value
            recent.append(pid)
            if index % 600 == 300 and len(killed) < 3:  # three kills, far apart
                victim = rng.choice([p for p in recent if p not in killed] or [pid])
                killed.add(victim)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(victim, signal.SIGKILL)
        stats = m.statistics()
    assert results == {x: 3 * x for x in range(3_000)}
    assert stats.completed == stats.submitted == 3_000
    assert getattr(executor, "restarts", 0) >= 1


async def test_a_failing_setup_is_a_start_up_error(kind: str) -> None:
    model = process_models.FailsSetup
    with pytest.raises(asyncml.SetupError, match="FileNotFoundError: no weights"):
        async with asyncml.load(model, executor=pool(kind)):
            pytest.fail("must not start")


async def test_a_pool_whose_dead_workers_cannot_be_replaced_is_broken(
    kind: str, tmp_path: Path
) -> None:
    executor = pool(kind, workers=1)
    model = ray_models.SetsUpOnce(str(tmp_path / "set-up"))
    async with asyncio.timeout(120), asyncml.load(model, executor=executor, name="once") as m:
        _, pid = await m(1)
        assert not m.statistics().broken
        os.kill(pid, signal.SIGKILL)
        # The item finds its worker dead; every replacement's setup() fails, and the item
        # fails with the pool.
        with pytest.raises(asyncml.SetupError) as failed:
            await m(2)
        assert isinstance(executor.broken, asyncml.SetupError)
        assert str(failed.value) == str(executor.broken)
        assert m.statistics().broken
        with pytest.raises(asyncml.SetupError):
            await m(3)  # fails at once: no worker is left to try
        stats = m.statistics()
    assert (stats.completed, stats.failed) == (1, 2)
