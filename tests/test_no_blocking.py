"""The event loop never runs model code, and the test harness would notice if it did."""

from __future__ import annotations

import asyncio
import time

import pytest
from blockbuster import BlockingError

import asyncml
from tests.helpers import GatedModel


async def test_the_harness_fails_a_test_that_blocks_the_loop() -> None:
    with pytest.raises(BlockingError):
        time.sleep(0.001)  # noqa: ASYNC251 - the point of the test


async def test_blocking_model_code_runs_off_the_loop() -> None:
    def sleepy(batch: list[int]) -> list[int]:
        time.sleep(0.001)  # would fail this test if it ran on the loop
        return batch

    async with asyncml.load(sleepy, workers=2) as m:
        assert await m.map(range(50)) == list(range(50))


async def test_no_task_outlives_the_block() -> None:
    before = asyncio.all_tasks()
    model = GatedModel()
    async with asyncml.load(model, workers=3) as m, asyncml.LoopLagMonitor(interval=0.001):
        await m.map(range(100))
    assert asyncio.all_tasks() == before
