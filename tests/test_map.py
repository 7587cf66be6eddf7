"""asyncml.map: Pool.map for one-item functions, streaming, bounded, and crash-safe."""

from __future__ import annotations

import contextlib
import logging

import pytest

import asyncml
from asyncml.pipeline import LogProgress
from tests import process_models as models
from tests.helpers import Endless


async def test_awaiting_gives_every_result_in_order() -> None:
    assert await asyncml.map(models.square, range(200), workers=2, chunk_size=8) == [
        x * x for x in range(200)
    ]


async def test_as_completed_gives_every_result_once() -> None:
    run = asyncml.map(models.square, range(100), workers=2, ordered=False, chunk_size=4)
    assert sorted([r async for r in run]) == [x * x for x in range(100)]


async def test_an_endless_input_is_pulled_only_as_results_are_taken() -> None:
    endless = Endless()
    taken = []
    run = asyncml.map(models.square, endless, executor="thread", max_in_flight=16)
    async with contextlib.aclosing(run.__aiter__()) as results:
        async for result in results:
            taken.append(result)
            if len(taken) == 100:
                break
    assert taken == [x * x for x in range(100)]
    assert endless.pulled <= 100 + 16


async def test_a_failing_item_fails_alone_and_nothing_runs_twice() -> None:
    calls: list[int] = []

    def picky(x: int) -> int:
        calls.append(x)
        if x == 5:
            raise ValueError("five")
        return x

    results = await asyncml.map(
        picky, range(20), executor="thread", chunk_size=8, return_exceptions=True
    )
    assert isinstance(results[5], asyncml.ModelError)
    assert results[5].index == 5
    assert "ValueError: five" in str(results[5])
    assert sorted(calls) == list(range(20))  # the failure re-ran nothing
    with pytest.raises(asyncml.ModelError) as caught:
        await asyncml.map(picky, range(20), executor="thread")
    assert caught.value.index == 5


async def test_an_item_that_kills_its_worker_fails_with_worker_crashed() -> None:
    results = await asyncml.map(
        models.square_unless_13, range(20), workers=2, chunk_size=4, return_exceptions=True
    )
    assert isinstance(results[13], asyncml.WorkerCrashed)
    assert results[13].index == 13
    assert isinstance(results[7], asyncml.ModelError)
    assert [r for i, r in enumerate(results) if i not in (7, 13)] == [
        x * x for x in range(20) if x not in (7, 13)
    ]


async def test_map_shows_progress_through_a_pluggable_display(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="asyncml.pipeline")
    results = await asyncml.map(models.square, range(50), executor="thread", progress=LogProgress())
    assert results == [x * x for x in range(50)]
    assert caplog.messages[-1].startswith("stage square: 50/50 done")


async def test_map_refuses_async_functions_and_bad_sizes_at_once() -> None:
    async def fetch(x: int) -> int:
        return x

    class Scorer:
        async def __call__(self, x: int) -> int:
            return x

    with pytest.raises(TypeError, match="'fetch' is an async function"):
        asyncml.map(fetch, [1], executor="thread")
    with pytest.raises(TypeError, match="'Scorer' is an async function"):
        asyncml.map(Scorer(), [1], executor="thread")
    with pytest.raises(ValueError, match="chunk_size must be an int >= 1, got 0"):
        asyncml.map(models.square, [1], chunk_size=0)
    with pytest.raises(ValueError, match="max_in_flight must be an int >= 1, got -1"):
        asyncml.map(models.square, [1], max_in_flight=-1)
