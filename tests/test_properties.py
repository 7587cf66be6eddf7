"""Property tests: under random arrivals, deadlines, cancellations and failing items, every
call gets exactly one outcome, every result belongs to its own input, items whose deadline
passed or that were cancelled before dispatch are never computed, and the counters add up;
with length-aware batching too, whose bookkeeping is empty once the queue is.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from typing import Any

from blockbuster import blockbuster_ctx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import asyncml
from tests.fakeclock import FakeClockLoop


@dataclass(frozen=True)
class Call:
    arrival: float  # seconds after the start
    poison: bool
    bad_cost: bool  # item_cost() raises for it, when the model groups by cost
    timeout: float | None
    cancel_after: float | None  # seconds after arrival


calls = st.lists(
    st.builds(
        Call,
        arrival=st.floats(0, 0.05),
        poison=st.booleans(),
        bad_cost=st.sampled_from([False, False, False, True]),
        timeout=st.none() | st.floats(0.0005, 0.03),
        cancel_after=st.none() | st.floats(0, 0.03),
    ),
    min_size=1,
    max_size=60,
)


class Recorder:
    """An async model that takes ``cost`` seconds per item of virtual time."""

    def __init__(self, poison: set[int], cost: float) -> None:
        self.poison = poison
        self.cost = cost
        self.dispatched: dict[int, float] = {}  # item -> first time it reached predict

    async def __call__(self, batch: list[int]) -> list[tuple[str, int]]:
        now = asyncio.get_running_loop().time()
        for item in batch:
            self.dispatched.setdefault(item, now)
        await asyncio.sleep(self.cost * len(batch))
        if self.poison.intersection(batch):
            raise ValueError("poison")
        return [("out", item) for item in batch]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    scenario=calls,
    workers=st.integers(1, 3),
    max_batch_size=st.integers(1, 8),
    max_wait=st.sampled_from([0.0, 0.002]),
    max_queue=st.integers(1, 20),
    cost=st.floats(0.0001, 0.004),
    grouping=st.sampled_from(["fifo", "cost", "budget"]),
)
def test_every_call_gets_exactly_one_outcome_on_a_fake_clock(
    scenario: list[Call],
    workers: int,
    max_batch_size: int,
    max_wait: float,
    max_queue: int,
    cost: float,
    grouping: str,
) -> None:
    poison = {i for i, call in enumerate(scenario) if call.poison}
    grouped = grouping != "fifo"
    bad_cost = {i for i, call in enumerate(scenario) if call.bad_cost and grouped}

    def item_cost(item: int) -> float:
        if item in bad_cost:
            raise ValueError("no cost")
        return float(1 + item * 7 % 10)

    model = Recorder(poison, cost)
    outcomes: dict[int, list[Any]] = {i: [] for i in range(len(scenario))}
    deadlines: dict[int, float] = {}
    cancelled_at: dict[int, float] = {}

    async def main() -> asyncml.ModelStatistics:
        loop = asyncio.get_running_loop()
        async with asyncml.load(
            model,
            workers=workers,
            max_batch_size=max_batch_size,
            max_wait=max_wait,
            max_queue=max_queue,
            item_cost=item_cost if grouped else None,
            max_batch_cost=12 if grouping == "budget" else None,
        ) as m:

            async def one(i: int, call: Call) -> None:
                try:
                    await asyncio.sleep(call.arrival)
                    if call.timeout is not None:
                        deadlines[i] = loop.time() + call.timeout
                    outcomes[i].append(await m(i, timeout=call.timeout))
                except (asyncml.AsyncmlError, asyncio.CancelledError) as exc:
                    outcomes[i].append(exc)

            tasks = [asyncio.ensure_future(one(i, call)) for i, call in enumerate(scenario)]
            for i, call in enumerate(scenario):
                if call.cancel_after is not None:
                    loop.call_later(call.arrival + call.cancel_after, cancel, i, tasks[i])
            await asyncio.gather(*tasks)
            if grouped:  # once nothing is queued, no item may be counted as passed over
                await m._running().wait_idle()
                grouper = m._running()._grouper
                assert grouper is not None
                assert len(grouper) == 0
        return m.statistics()  # after the drain: a cancelled caller's batch may still run

    def cancel(i: int, task: asyncio.Task[None]) -> None:
        if not task.done():
            cancelled_at[i] = asyncio.get_running_loop().time()
            task.cancel()

    with blockbuster_ctx(), asyncio.Runner(loop_factory=FakeClockLoop) as runner:
        stats = runner.run(main())

    for i, results in outcomes.items():
        assert len(results) == 1, f"call {i} got {results}"
        result = results[0]
        if isinstance(result, tuple):
            assert result == ("out", i)
            assert i not in poison
            assert i not in bad_cost
        elif isinstance(result, asyncml.ModelError):
            assert i in poison or i in bad_cost
        elif isinstance(result, asyncml.ItemTimeout):
            assert i in deadlines
        else:
            assert isinstance(result, asyncio.CancelledError)
            assert i in cancelled_at
        if i in model.dispatched:
            assert i not in bad_cost, "an item without a cost was computed"
            if i in deadlines:
                assert model.dispatched[i] < deadlines[i], "computed after its deadline"
            if i in cancelled_at:
                assert model.dispatched[i] <= cancelled_at[i], "computed after cancellation"
    assert stats.queued == stats.in_flight == 0
    assert stats.submitted == stats.completed + stats.failed + stats.timed_out + stats.cancelled
    assert stats.completed == sum(isinstance(r[0], tuple) for r in outcomes.values())
    assert stats.failed == sum(isinstance(r[0], asyncml.ModelError) for r in outcomes.values())


class Identity:
    def __init__(self, poison: set[int]) -> None:
        self.poison = poison
        self.lock = threading.Lock()

    def __call__(self, batch: list[int]) -> list[int]:
        if self.poison.intersection(batch):
            raise ValueError("poison")
        return [item * 3 for item in batch]


@settings(max_examples=60, deadline=None)
@given(
    count=st.integers(1, 300),
    poison=st.sets(st.integers(0, 299), max_size=5),
    cancel=st.sets(st.integers(0, 299), max_size=30),
    workers=st.integers(1, 3),
    max_batch_size=st.integers(1, 64),
)
def test_every_call_gets_exactly_one_outcome_on_threads(
    count: int, poison: set[int], cancel: set[int], workers: int, max_batch_size: int
) -> None:
    async def main() -> tuple[list[Any], asyncml.ModelStatistics]:
        async with asyncml.load(
            Identity(poison), workers=workers, max_batch_size=max_batch_size, max_queue=50
        ) as m:
            tasks = [asyncio.ensure_future(m(i)) for i in range(count)]
            await asyncio.sleep(0)
            for i in cancel:
                if i < count:
                    tasks[i].cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
        return results, m.statistics()

    with blockbuster_ctx() as bb:
        for name in ("threading.Lock.acquire", "threading.Lock.acquire_lock"):
            bb.functions[name].can_block_in("asyncml/executors/_base.py", "join_workers")
        bb.functions["threading.Lock.acquire"].can_block_in("threading.py", "start")
        results, stats = asyncio.run(main())

    for i, result in enumerate(results):
        if isinstance(result, asyncio.CancelledError):
            assert i in cancel
        elif isinstance(result, asyncml.ModelError):
            assert i in poison
        else:
            assert result == i * 3
    assert stats.submitted == stats.completed + stats.failed + stats.cancelled
    assert stats.failed == sum(isinstance(r, asyncml.ModelError) for r in results)
