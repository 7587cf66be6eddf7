"""A pipeline kept open and called item by item, as servers and jobs use it."""

from __future__ import annotations

import asyncio
import contextlib
import math

import pytest

import asyncml
from asyncml.pipeline import Pipeline, PipelineFailed, Retry, stage
from tests.helpers import until


def double(x: int) -> int:
    return 2 * x


def fails_on_13(x: int) -> int:
    if x == 13:
        raise ValueError("thirteen")
    return x


async def test_concurrent_calls_each_get_their_own_output_and_batch_together() -> None:
    sizes: list[int] = []

    def add_one(batch: list[int]) -> list[int]:
        sizes.append(len(batch))
        return [x + 1 for x in batch]

    pipeline = Pipeline(
        stage(double, executor="inline"), stage(add_one, batched=True, batch_size=32)
    )
    async with pipeline.open() as service:
        got = await asyncio.gather(*(service(i) for i in range(200)))
    assert got == [2 * i + 1 for i in range(200)]
    assert max(sizes) > 1  # concurrent calls shared batches


async def test_a_failed_item_raises_for_its_caller_only() -> None:
    pipeline = Pipeline(stage(fails_on_13, executor="thread", retry=Retry(2, backoff=0.0)))
    async with pipeline.open() as service:
        results = await asyncio.gather(*(service(i) for i in range(20)), return_exceptions=True)
    assert results[:13] == list(range(13))
    error = results[13]
    assert isinstance(error, asyncml.ModelError)
    assert str(error) == ("stage 'fails_on_13' failed after 2 attempt(s): ValueError: thirteen")
    assert results[14:] == list(range(14, 20))


async def test_flat_pipelines_answer_with_the_list_of_outputs() -> None:
    def repeat(x: int) -> list[int]:
        return [x] * (x % 3)

    async with Pipeline(stage(repeat, executor="inline", flat=True)).open() as service:
        assert list(await asyncio.gather(service(0), service(1), service(2))) == [[], [1], [2, 2]]


async def test_admission_is_bounded() -> None:
    gate = asyncio.Event()

    async def held(x: int) -> int:
        await gate.wait()
        return x

    async with Pipeline(stage(held, concurrency=4)).open(max_queue=3) as service:
        futures = [service.call_nowait(i) for i in range(3)]
        with pytest.raises(asyncml.Overloaded):
            service.call_nowait(3)
        waiting = asyncio.ensure_future(service(4))  # waits for room instead
        await asyncio.sleep(0)
        assert not waiting.done()
        gate.set()
        assert await asyncio.gather(*futures) == [0, 1, 2]
        assert await waiting == 4
    with pytest.raises(asyncml.Closed):
        service.call_nowait(5)


async def test_leaving_normally_answers_every_call_made() -> None:
    async def slow(x: int) -> int:
        await asyncio.sleep(0.01)
        return x

    async with Pipeline(stage(slow, concurrency=2)).open() as service:
        futures = [service.call_nowait(i) for i in range(10)]
    assert [future.result() for future in futures] == list(range(10))


async def test_a_call_past_its_deadline_fails_and_no_later_stage_computes_it() -> None:
    gate = asyncio.Event()
    seen: list[str] = []

    async def held(x: str) -> str:
        await gate.wait()
        return x

    def record(x: str) -> str:
        seen.append(x)
        return x

    pipeline = Pipeline(stage(held, concurrency=1), stage(record, executor="inline"))
    async with pipeline.open(timeout=60) as service:
        first = service.call_nowait("first")
        late = service.call_nowait("late", timeout=0.01)  # queued behind "first"
        with pytest.raises(asyncml.ItemTimeout, match="the item's deadline passed"):
            await late
        gate.set()
        assert await first == "first"
        assert await service("next", timeout=math.inf) == "next"
        stats = service.statistics()
    assert seen == ["first", "next"]
    assert [s.withdrawn for s in stats.stages] == [1, 0]
    assert not stats.broken


async def test_a_cancelled_call_is_withdrawn_before_the_next_stage() -> None:
    gate = asyncio.Event()
    seen: list[str] = []

    async def held(x: str) -> str:
        await gate.wait()
        return x

    pipeline = Pipeline(stage(held, concurrency=4), stage(seen.append, executor="inline"))
    async with pipeline.open() as service:
        kept = service.call_nowait("kept")
        dropped = service.call_nowait("dropped")
        await until(lambda: service.statistics().stages[0].in_flight == 2)
        dropped.cancel()  # its first stage runs on; the second never sees it
        gate.set()
        await kept
        await until(lambda: service.statistics().finished == 2)
        stats = service.statistics()
    assert seen == ["kept"]
    assert [s.withdrawn for s in stats.stages] == [0, 1]
    assert [s.received for s in stats.stages] == [2, 2]  # the second stage dropped one


async def test_waiting_for_room_counts_against_the_deadline() -> None:
    gate = asyncio.Event()

    async def held(x: int) -> int:
        await gate.wait()
        return x

    async with Pipeline(stage(held)).open(max_queue=1) as service:
        first = service.call_nowait(1)
        with pytest.raises(asyncml.ItemTimeout):
            await service(2, timeout=0.01)
        gate.set()
        assert await first == 1


class Crash(BaseException):
    """Not an ``Exception``: a stage's worker lets it through, which breaks the run."""


async def test_a_broken_run_answers_every_call_and_refuses_new_ones() -> None:
    hold, crash_now, opened, leave = (asyncio.Event() for _ in range(4))

    async def work(x: str) -> str:
        if x == "crash":
            await crash_now.wait()
            raise Crash("the worker gave up")
        await hold.wait()
        return x

    service = Pipeline(stage(work, concurrency=2)).open(max_queue=2)

    async def owner() -> None:
        async with service:
            opened.set()
            while not leave.is_set():
                # The broken run cancels the task that entered the service; this one stays
                # in the block a while, as a task busy elsewhere would.
                with contextlib.suppress(asyncio.CancelledError):
                    await leave.wait()

    owning = asyncio.create_task(owner())
    await opened.wait()
    held = service.call_nowait("held")
    crashing = service.call_nowait("crash")
    waiting = asyncio.ensure_future(service("waits for room"))
    await until(lambda: service.statistics().stages[0].in_flight == 2)
    assert not waiting.done()
    crash_now.set()
    async with asyncio.timeout(5):
        outcomes = await asyncio.gather(held, crashing, waiting, return_exceptions=True)
    for outcome in outcomes:
        assert isinstance(outcome, asyncml.Closed)
        assert str(outcome) == (
            "pipeline 'work' stopped: stage 'work' broke: Crash: the worker gave up"
        )
        assert isinstance(outcome.__cause__, PipelineFailed)
        assert isinstance(outcome.__cause__.__cause__, Crash)
    with pytest.raises(asyncml.Closed, match="stopped: stage 'work' broke"):
        service.call_nowait("later")
    assert not owning.done()  # refused by the service itself, not by leaving the block
    leave.set()
    with pytest.raises(Crash):
        await owning


async def test_leaving_on_an_error_fails_the_calls_made_and_those_waiting_for_room() -> None:
    gate = asyncio.Event()

    async def held(x: int) -> int:
        await gate.wait()
        return x

    with pytest.raises(RuntimeError, match="the caller's own"):
        async with Pipeline(stage(held)).open(max_queue=1) as service:
            made = service.call_nowait(1)
            waiting = asyncio.ensure_future(service(2))
            await asyncio.sleep(0)
            raise RuntimeError("the caller's own error")
    async with asyncio.timeout(5):
        outcomes = await asyncio.gather(made, waiting, return_exceptions=True)
    assert [type(outcome) for outcome in outcomes] == [asyncml.Closed, asyncml.Closed]
    with pytest.raises(asyncml.Closed, match="pipeline 'held' is closed"):
        service.call_nowait(3)


def test_open_refuses_a_timeout_that_is_not_positive() -> None:
    with pytest.raises(ValueError, match="timeout"):
        Pipeline(stage(double)).open(timeout=0)
