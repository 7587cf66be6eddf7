"""A pipeline kept open and called item by item, as servers and jobs use it."""

from __future__ import annotations

import asyncio

import pytest

import asyncml
from asyncml.pipeline import Pipeline, Retry, stage


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
