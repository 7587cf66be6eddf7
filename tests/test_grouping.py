"""Length-aware batching: similar items together, under a cost budget, oldest first, and no
item passed over more than ``PASS_LIMIT`` times once its turn has come."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import asyncml
from asyncml import _grouping
from asyncml._grouping import in_arrival_order, pick_similar
from asyncml.executors import BatchDone, InlineExecutor
from tests.fakeclock import FakeClockLoop
from tests.helpers import GatedModel, until


@given(
    costs=st.lists(st.integers(1, 100), min_size=1, max_size=60),
    max_items=st.integers(1, 16),
    max_cost=st.none() | st.integers(1, 400),
)
def test_a_pick_is_the_oldest_and_its_nearest_neighbours_within_budget(
    costs: list[int], max_items: int, max_cost: int | None
) -> None:
    chosen = pick_similar([float(c) for c in costs], max_items=max_items, max_cost=max_cost)
    assert chosen[0] == 0
    assert chosen == sorted(set(chosen))
    assert len(chosen) <= max_items
    if max_cost is not None and len(chosen) > 1:
        assert len(chosen) * max(costs[i] for i in chosen) <= max_cost
    low, high = min(costs[i] for i in chosen), max(costs[i] for i in chosen)
    strictly_between = [i for i, c in enumerate(costs) if low < c < high and i not in chosen]
    assert not strictly_between, "a batch is a run of neighbours in cost"


def test_an_item_over_budget_goes_alone() -> None:
    assert pick_similar([500.0, 1.0, 1.0], max_items=8, max_cost=100) == [0]


@given(
    costs=st.lists(st.integers(1, 100), min_size=1, max_size=60),
    due_flags=st.lists(st.booleans(), min_size=60, max_size=60),
    max_items=st.integers(1, 16),
    max_cost=st.none() | st.integers(1, 400),
)
def test_due_items_go_first_and_no_newer_item_goes_before_one_left_out(
    costs: list[int], due_flags: list[bool], max_items: int, max_cost: int | None
) -> None:
    due = [i for i in range(len(costs)) if due_flags[i]]
    chosen = pick_similar(
        [float(c) for c in costs], max_items=max_items, max_cost=max_cost, due=due
    )
    assert chosen[0] == 0
    assert chosen == sorted(set(chosen))
    assert len(chosen) <= max_items
    if max_cost is not None and len(chosen) > 1:
        assert len(chosen) * max(costs[i] for i in chosen) <= max_cost
    left_out = [i for i in due if i not in chosen]
    if left_out:
        assert max(chosen) < left_out[0], "a newer item went before a due one"
    taken = [i for i in due if i in chosen and i != 0]
    assert taken == [i for i in due if i != 0][: len(taken)], "due items go in arrival order"


@given(
    costs=st.lists(st.integers(1, 100), min_size=1, max_size=40),
    max_items=st.integers(1, 16),
    max_cost=st.none() | st.integers(1, 400),
)
def test_a_turn_is_the_longest_run_of_oldest_items_that_fits_a_batch(
    costs: list[int], max_items: int, max_cost: int | None
) -> None:
    def fits(count: int) -> bool:
        return max_cost is None or count * max(costs[:count]) <= max_cost

    turn = in_arrival_order([float(c) for c in costs], max_items=max_items, max_cost=max_cost)
    assert 1 <= turn <= min(max_items, len(costs))
    assert turn == 1 or fits(turn)
    assert turn == min(max_items, len(costs)) or not fits(turn + 1)


async def test_an_item_passed_over_goes_first_in_the_next_batch() -> None:
    model = GatedModel()
    model.gate.clear()
    async with asyncml.load(model, max_batch_size=3, item_cost=len) as m:
        blocker = asyncio.ensure_future(m("x"))
        await model.started.wait()
        texts = ["a" * n for n in (10, 90, 50, 10, 10, 90, 90)]
        calls = [asyncio.ensure_future(m(t)) for t in texts]
        await until(lambda: m.statistics().queued == len(texts))
        model.gate.set()
        assert await asyncio.gather(*calls) == [("out", t) for t in texts]
        await blocker
    lengths = [[len(t) for t in batch] for batch in model.batches[1:]]
    # In arrival order the first batch would have held 10, 90 and 50: it took the short
    # texts instead, passing 90 and 50 over, so both go first in the next batch (which
    # would otherwise have been the three 90s, leaving 50 for last).
    assert lengths == [[10, 10, 10], [90, 50, 90], [90]]


async def test_queued_items_are_grouped_by_length_under_the_budget() -> None:
    model = GatedModel()
    model.gate.clear()
    async with asyncml.load(model, max_batch_size=4, item_cost=len, max_batch_cost=40) as m:
        blocker = asyncio.ensure_future(m("x"))
        await model.started.wait()
        texts = ["aa", "aaaaaaaaaa", "a", "aaaaaaaaa", "aaa", "aaaaaaaaaaa", "aa", "a"]
        calls = [asyncio.ensure_future(m(t)) for t in texts]
        await until(lambda: m.statistics().queued == len(texts))
        model.gate.set()
        assert await asyncio.gather(*calls) == [("out", t) for t in texts]
        await blocker
    lengths = [sorted(len(t) for t in batch) for batch in model.batches[1:]]
    # Short texts together, long ones together, the oldest queued text in each next batch
    # (a fourth long text would have cost 4 x 11 > 40).
    assert lengths == [[1, 1, 2, 2], [9, 10, 11], [3]]
    for batch in model.batches[1:]:
        assert len(batch) * max(len(t) for t in batch) <= 40 or len(batch) == 1


async def test_an_item_whose_cost_fails_fails_alone() -> None:
    def cost(item: Any) -> float:
        return float(len(item))

    async with asyncml.load(GatedModel(), item_cost=cost) as m:
        results = await m.map(["ab", 3, "c"], return_exceptions=True)
    assert results[0] == ("out", "ab")
    assert results[2] == ("out", "c")
    assert isinstance(results[1], asyncml.ModelError)
    assert "item_cost() failed: TypeError" in str(results[1])


class Embedder(asyncml.Model[str, int]):
    item_cost = staticmethod(len)
    max_batch_cost = 100.0

    def predict(self, batch: list[str]) -> list[int]:
        return [len(text) for text in batch]


async def test_a_model_class_sets_its_grouping() -> None:
    async with asyncml.load(Embedder) as m:
        assert await m.map(["a" * n for n in range(1, 30)]) == list(range(1, 30))
        stats = m.statistics()
    assert stats.completed == 29


def test_a_budget_needs_a_cost() -> None:
    with pytest.raises(ValueError, match="max_batch_cost needs item_cost"):
        asyncml.load(GatedModel(), max_batch_cost=10)
    with pytest.raises(ValueError, match="max_batch_cost must be"):
        asyncml.load(GatedModel(), item_cost=len, max_batch_cost=0)


@pytest.mark.parametrize("leaves_by", ["dispatch", "compaction"])
def test_an_item_that_leaves_the_queue_unbatched_is_no_longer_counted(leaves_by: str) -> None:
    texts = ["a" * n for n in (10, 90, 50, 10, 10, 90, 90)]

    async def predict(batch: list[str]) -> list[int]:
        await asyncio.sleep(1.0)
        return [len(text) for text in batch]

    async def main() -> None:
        async with asyncml.load(
            predict, executor="inline", max_batch_size=3, max_queue=7, item_cost=len
        ) as m:
            blocker = asyncio.ensure_future(m("x"))
            await asyncio.sleep(0.1)
            # 50 expires at 1.6 s, while the first batch (dispatched at 1 s) passes it over.
            calls = [m.call_nowait(t, timeout=1.5 if len(t) == 50 else None) for t in texts]
            await asyncio.sleep(1.55)
            grouper = m._running()._grouper
            assert grouper is not None
            assert len(grouper) == 2  # 90 and 50 were passed over
            if leaves_by == "compaction":  # a full queue drops the expired item for room
                calls += [m.call_nowait("a" * 10) for _ in range(4)]
                assert m.statistics().queued == 7
            else:  # the next dispatch skips it
                await asyncio.sleep(1.0)
            results = await asyncio.gather(*calls, return_exceptions=True)
            assert isinstance(results[2], asyncml.ItemTimeout)
            await blocker
            assert len(grouper) == 0
            assert m.statistics().timed_out == 1

    with asyncio.Runner(loop_factory=FakeClockLoop) as runner:
        runner.run(main())


class RecordingExecutor(InlineExecutor):
    """The inline executor, noting each batch in ``events`` as it is dispatched."""

    def __init__(self, events: list[tuple[str, Any]], workers: int) -> None:
        super().__init__(workers)
        self.events = events

    def submit(self, items: Sequence[Any], done: BatchDone) -> None:
        self.events.append(("batch", list(items)))
        super().submit(items, done)


def times_passed_over(
    events: Sequence[tuple[str, Any]], costs: Sequence[int], max_items: int, max_cost: int | None
) -> dict[int, int]:
    """How often each item was passed over: a batch took a newer item but not this one,
    though a batch in arrival order would have held it (``events``: items as queued and
    batches as dispatched, in one sequence)."""
    queue: list[int] = []
    passed = dict.fromkeys(range(len(costs)), 0)
    for kind, payload in events:
        if kind == "queued":
            queue.append(payload)
            continue
        turn, largest = 0, 0
        for item in queue[:max_items]:
            largest = max(largest, costs[item])
            if turn and max_cost is not None and (turn + 1) * largest > max_cost:
                break
            turn += 1
        newest = max(queue.index(item) for item in payload)
        for item in queue[: min(turn, newest)]:
            if item not in payload:
                passed[item] += 1
        queue = [item for item in queue if item not in payload]
    return passed


@contextmanager
def pass_limit(limit: int) -> Iterator[None]:
    saved = _grouping.PASS_LIMIT
    _grouping.PASS_LIMIT = limit
    try:
        yield
    finally:
        _grouping.PASS_LIMIT = saved


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    # Short and long items, mostly arriving in bursts: what gets items passed over.
    costs=st.lists(st.sampled_from([1, 2, 3, 5, 8, 30, 40, 45, 50]), min_size=10, max_size=80),
    arrivals=st.lists(st.sampled_from([0.0, 0.0, 0.0, 0.002, 0.01]), min_size=80, max_size=80),
    max_batch_size=st.integers(1, 8),
    max_cost=st.none() | st.integers(20, 200),
    workers=st.integers(1, 2),
    limit=st.sampled_from([_grouping.PASS_LIMIT, 2]),
)
def test_no_item_is_passed_over_more_than_the_limit(
    costs: list[int],
    arrivals: list[float],
    max_batch_size: int,
    max_cost: int | None,
    workers: int,
    limit: int,
) -> None:
    events: list[tuple[str, Any]] = []

    async def predict(batch: list[int]) -> list[int]:
        # Padded to the dearest item, as a transformer pads to the longest sentence.
        await asyncio.sleep(len(batch) * max(costs[i] for i in batch) * 0.0001)
        return [i * 3 for i in batch]

    async def main() -> list[int]:
        async with asyncml.load(
            predict,
            executor=RecordingExecutor(events, workers),
            max_batch_size=max_batch_size,
            max_queue=len(costs),  # every call queues at once, in the order noted
            item_cost=costs.__getitem__,
            max_batch_cost=max_cost,
        ) as m:

            async def one(i: int) -> int:
                await asyncio.sleep(sum(arrivals[: i + 1]))
                events.append(("queued", i))
                return await m(i)

            return await asyncio.gather(*(one(i) for i in range(len(costs))))

    with pass_limit(limit), asyncio.Runner(loop_factory=FakeClockLoop) as runner:
        results = runner.run(main())

    assert results == [i * 3 for i in range(len(costs))]
    batches = [payload for kind, payload in events if kind == "batch"]
    assert sorted(i for batch in batches for i in batch) == list(range(len(costs)))
    for batch in batches:
        assert len(batch) <= max_batch_size
        if max_cost is not None and len(batch) > 1:
            assert len(batch) * max(costs[i] for i in batch) <= max_cost
    passed = times_passed_over(events, costs, max_batch_size, max_cost)
    assert max(passed.values()) <= limit
