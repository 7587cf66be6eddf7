"""The loop-lag monitor sees a loop that was kept busy, and nothing on an idle one."""

from __future__ import annotations

import asyncio

import pytest

import asyncml
from tests.fakeclock import FakeClockLoop


async def test_an_idle_loop_has_no_lag(clock: FakeClockLoop) -> None:
    async with asyncml.LoopLagMonitor(interval=0.01) as monitor:
        await asyncio.sleep(1.0)
    stats = monitor.statistics()
    assert stats.samples in (99, 100)  # the 100th timer and the sleep end tie
    assert stats.lag.max_ms == 0


async def test_a_busy_loop_shows_as_lag(clock: FakeClockLoop) -> None:
    async with asyncml.LoopLagMonitor(interval=0.01) as monitor:
        await asyncio.sleep(0.1)
        clock.advance(0.25)  # as if a callback had held the loop for 250 ms
        await asyncio.sleep(0.1)
    stats = monitor.statistics()
    assert stats.lag.max_ms == pytest.approx(250, abs=10)
    assert stats.lag.p50_ms == 0


async def test_the_monitor_stops_with_its_block() -> None:
    monitor = asyncml.LoopLagMonitor(interval=0.001)
    async with monitor:
        with pytest.raises(RuntimeError, match="already running"):
            await monitor.__aenter__()
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    assert tasks == []


def test_the_interval_must_be_positive() -> None:
    with pytest.raises(ValueError, match="interval"):
        asyncml.LoopLagMonitor(interval=0)
