"""Ray actors, against a real local Ray (two CPUs) and a simulated cluster of three nodes:
batches cross whole, arrays through the object store, the pool scales between its bounds,
pipeline stages run on actors, and no actor outlives its block. The crash contract it
shares with process workers is in ``test_ray_crash_contract``."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import signal
import threading
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import asyncml
from asyncml.executors import BatchDone, RayExecutor
from asyncml.pipeline import Pipeline, stage
from tests import process_models, ray_models
from tests.helpers import until
from tests.ray_session import ray_cluster, ray_local, ray_session  # noqa: F401  # fixtures


@pytest.fixture(autouse=True)
def local_ray_unless_a_cluster(request: pytest.FixtureRequest) -> None:
    if "ray_cluster" not in request.fixturenames:
        request.getfixturevalue("ray_local")


async def eventually(predicate: Callable[[], bool], *, within: float = 60) -> None:
    """Waits until ``predicate()`` holds, checking every 50 ms (fails after ``within`` s)."""
    async with asyncio.timeout(within):
        while not predicate():  # noqa: ASYNC110  # the state polled has no event to wait on
            await asyncio.sleep(0.05)


async def test_actors_set_up_once_and_run_whole_batches(tmp_path: Path) -> None:
    log = tmp_path / "setups.log"
    pool = RayExecutor(2, num_cpus=0.5)
    async with asyncml.load(process_models.CountsSetups(str(log)), executor=pool) as m:
        assert await m.map(range(500)) == list(range(500))
        batches = m.statistics().batches
    assert len((await asyncio.to_thread(log.read_text)).split()) == 2
    assert sum(pool.served.values()) == batches  # one actor call per batch
    async with asyncml.load(process_models.pids, executor="ray", workers=2) as m:
        assert os.getpid() not in set(await m.map(range(200)))


async def test_large_arrays_cross_through_the_object_store() -> None:
    arrays = [np.full((500, 500), float(i)) for i in range(12)]  # 2 MB each
    rows = [np.arange(6, dtype=np.float32) + i for i in range(300)]  # stacked into one
    async with asyncml.load(ray_models.shape_and_sum, executor="ray", max_batch_size=4) as m:
        assert await m.map(arrays) == [((500, 500), 250_000.0 * i) for i in range(12)]
    async with asyncml.load(process_models.doubled_rows, executor="ray") as m:
        results = await m.map(rows)
    for row, result in zip(rows, results, strict=True):
        np.testing.assert_array_equal(result, row * 2)
        assert result.dtype == np.float32


async def test_an_item_ray_cannot_pickle_fails_alone() -> None:
    async with asyncml.load(process_models.identity, executor="ray", max_batch_size=8) as m:
        results = await m.map([1, threading.Lock(), 3], return_exceptions=True)
    assert results[0] == 1
    assert results[2] == 3
    assert isinstance(results[1], asyncml.ModelError)
    assert "cannot be sent to a Ray actor" in str(results[1])


async def test_a_hung_batch_is_killed_after_the_execution_timeout() -> None:
    pool = RayExecutor(2, num_cpus=0.5, execution_timeout=1.0, max_attempts=2)
    async with asyncml.load(process_models.hang_on_13, executor=pool, max_batch_size=1) as m:
        results = await m.map([12, 13, 14], return_exceptions=True)
    assert results[0] == 36
    assert results[2] == 42
    assert isinstance(results[1], asyncml.WorkerCrashed)
    assert "execution timeout" in str(results[1])


async def test_leaving_on_an_error_kills_running_batches() -> None:
    with pytest.raises(KeyError):
        async with asyncml.load(process_models.hang_on_13, executor="ray") as m:
            stuck = asyncio.ensure_future(m(13))
            await until(lambda: m.statistics().in_flight == 1)
            raise KeyError("stop")
    assert isinstance(stuck.exception(), asyncml.Closed)


async def test_the_pool_grows_when_busy_and_shrinks_when_idle() -> None:
    """Each batch holds until the test has seen two actors run one at once."""
    pids: set[int] = set()
    both_busy = asyncio.Event()
    held: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        pids.add(int(await reader.readline()))
        held.append(writer)
        if len(pids) == 2:
            both_busy.set()
        await both_busy.wait()
        writer.close()

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pool = RayExecutor(min_actors=1, max_actors=2, num_cpus=0.5, idle_timeout=0.5)
    model = process_models.HoldsBatches(port)
    async with server, asyncml.load(model, executor=pool, max_batch_size=1) as m:
        assert pool.capacity == 2
        first, second = asyncio.ensure_future(m(1)), asyncio.ensure_future(m(2))
        assert list(await asyncio.gather(first, second)) == [1, 2]  # needs a second actor
        assert len(pids) == 2
        await eventually(lambda: pool.actors == 1)  # the idle one stopped
        assert await m(3) == 3


async def test_an_actor_ray_cannot_place_is_a_clear_start_up_error() -> None:
    pool = RayExecutor(1, num_cpus=3, start_timeout=1)  # the local Ray has 2 CPUs
    with pytest.raises(asyncml.SetupError, match=r"start_timeout=1 s: Ray may have no 3 CPU"):
        async with asyncml.load(process_models.triple, executor=pool):
            pass


def test_a_bad_pool_size_is_refused() -> None:
    with pytest.raises(ValueError, match="min_actors <= actors <= max_actors"):
        RayExecutor(3, max_actors=2)
    with pytest.raises(ValueError, match="num_gpus"):
        RayExecutor(num_gpus=-1)
    with pytest.raises(TypeError, match="executor='inline'"):
        asyncml.load(process_models_async, executor="ray")


async def process_models_async(batch: list[int]) -> list[int]:
    return batch


# -- pipeline stages on Ray actors ------------------------------------------------------------


async def parse(text: str) -> int:
    await asyncio.sleep(0)
    return int(text)


def plus_one(answer: tuple[int, int, int]) -> tuple[int, int, int]:
    value, pid, call = answer
    return value + 1, pid, call


class NotesBatches(RayExecutor):
    """A Ray pool that notes the size of each batch its stage hands it."""

    def __init__(self, actors: int, **options: Any) -> None:
        super().__init__(actors, **options)
        self.sizes: list[int] = []

    def submit(self, items: Sequence[Any], done: BatchDone) -> None:
        self.sizes.append(len(items))
        super().submit(items, done)


async def test_a_pipeline_stage_runs_on_ray_actors() -> None:
    bad = {13, 213}  # given as negative numbers: the model raises for them
    source = [str(-x if x in bad else x) for x in range(400)]
    triple = stage(ray_models.tripled_with_call, batched=True, executor="ray", workers=2)
    pipeline = Pipeline(stage(parse), triple, stage(plus_one, executor="inline"))
    async with pipeline.stream(source, with_index=True) as outputs:
        got = [pair async for pair in outputs]
    good = [x for x in range(400) if x not in bad]
    assert [index for index, _ in got] == good  # in source order, the failed ones left out
    assert [value for _, (value, _, _) in got] == [3 * x + 1 for x in good]
    assert os.getpid() not in {pid for _, (_, pid, _) in got}
    summary = outputs.summary()
    assert (summary.outputs, summary.failed) == (398, 2)
    letters = sorted(summary.dead_letters, key=lambda letter: letter.index)
    assert [(d.index, d.stage, d.item, d.error_type) for d in letters] == [
        (13, "tripled_with_call", -13, "ValueError"),
        (213, "tripled_with_call", -213, "ValueError"),
    ]
    assert letters[0].message == "negative numbers are not welcome"


async def test_a_ray_stage_runs_whole_batches_and_loses_nothing_to_a_killed_actor() -> None:
    pool = NotesBatches(2, num_cpus=0.5)
    triple = stage(ray_models.tripled_with_call, batched=True, executor=pool, batch_size=16)
    pipeline = Pipeline(stage(parse), triple, stage(plus_one, executor="inline"))
    got: list[tuple[int, tuple[int, int, int]]] = []
    async with pipeline.stream(map(str, range(2_000)), with_index=True) as outputs:
        async for index, answer in outputs:
            got.append((index, answer))
            if index == 300:  # far from the end: the stage still has most items to run
                os.kill(answer[1], signal.SIGKILL)
    assert [index for index, _ in got] == list(range(2_000))  # every item once, in order
    assert [value for _, (value, _, _) in got] == [3 * x + 1 for x in range(2_000)]
    assert outputs.summary().failed == 0
    assert pool.restarts >= 1
    # One actor call per batch: the batches it ran are those the stage handed it, whole.
    calls = Counter((pid, call) for _, (_, pid, call) in got)
    assert sum(pool.served.values()) == len(pool.sizes) == len(calls)
    assert sorted(calls.values()) == sorted(pool.sizes)
    assert max(pool.sizes) > 1


# -- last: these replace the local Ray with a cluster of three nodes -------------------------


@pytest.mark.slow  # starts three nodes: deselect with -m "not slow"
async def test_batches_spread_over_the_nodes_of_a_cluster(ray_cluster: Any) -> None:  # noqa: F811
    import ray

    # Ray is not initialised: the executor connects to the cluster, and disconnects after.
    assert not ray.is_initialized()
    pool = RayExecutor(3, address=ray_cluster.address)
    model = ray_models.node_and_pid
    async with asyncml.load(model, executor=pool, max_batch_size=4, max_wait=0.01) as m:
        where = await _concurrently(m, 600)
    assert len({node for node, _ in where}) == 3
    assert len(pool.served) == 3
    assert not ray.is_initialized()


async def _concurrently(call: Callable[[int], Awaitable[Any]], count: int) -> list[Any]:
    return list(await asyncio.gather(*(call(i) for i in range(count))))


def test_models_starting_together_share_the_ray_asyncml_starts() -> None:
    """The bookkeeping of a Ray that asyncml starts (a stand-in for the ray module, which
    records its calls: a second real Ray cannot start beside the tests' own)."""
    from asyncml.executors._ray import _StartedRay

    class RayModule:
        def __init__(self) -> None:
            self.running = False
            self.calls: list[str] = []

        def is_initialized(self) -> bool:
            return self.running

        def init(self, **options: Any) -> None:
            assert not self.running, "ray.init twice"
            self.running = True
            self.calls.append("init")

        def shutdown(self) -> None:
            self.running = False
            self.calls.append("shutdown")

    ray, started = RayModule(), _StartedRay()
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        shares = list(pool.map(lambda _: started.join(ray, None, {}), range(4)))
    assert shares == [True] * 4
    assert ray.calls == ["init"]
    for _ in range(3):
        started.leave(ray)
    assert ray.calls == ["init"]  # one model still runs on it
    started.leave(ray)
    assert ray.calls == ["init", "shutdown"]
    ray.running = True  # a Ray of the user's: used, never shut down by asyncml
    assert started.join(ray, None, {}) is False
