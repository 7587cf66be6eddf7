"""The batcher's rules: when batches form, and that each item gets exactly one outcome."""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Iterator
from typing import Any

import pytest

import asyncml
from asyncml.executors import InlineExecutor
from tests.fakeclock import FakeClockLoop
from tests.helpers import Endless, GatedModel, until


async def test_a_lone_call_is_dispatched_at_once() -> None:
    model = GatedModel()
    async with asyncml.load(model, max_batch_size=64) as m:
        assert await m(1) == ("out", 1)
        assert model.batches == [[1]]


async def test_batches_grow_under_load_and_respect_the_maximum() -> None:
    model = GatedModel()
    model.gate.clear()
    async with asyncml.load(model, max_batch_size=8) as m:
        first = asyncio.ensure_future(m(0))
        await model.started.wait()
        rest = [asyncio.ensure_future(m(i)) for i in range(1, 21)]
        await until(lambda: m.statistics().queued == 20)
        model.gate.set()
        assert await asyncio.gather(first, *rest) == [("out", i) for i in range(21)]
    assert [len(b) for b in model.batches] == [1, 8, 8, 4]


async def test_callers_woken_by_a_batch_join_the_next_one() -> None:
    model = GatedModel()
    async with asyncml.load(model, max_batch_size=64) as m:

        async def caller(i: int) -> None:
            for _ in range(5):
                await m(i)

        await asyncio.gather(*(caller(i) for i in range(32)))
        # After the first call, each round of 32 callers lands in one batch.
        assert [len(b) for b in model.batches][-4:] == [32, 32, 32, 32]


async def test_max_wait_lets_a_free_worker_fill_its_batch(clock: FakeClockLoop) -> None:
    model = GatedModel()
    model.gate.clear()
    async with asyncml.load(model, workers=2, max_batch_size=4, max_wait=0.010) as m:
        busy = asyncio.ensure_future(m("a"))  # occupies worker 1: now there is load
        await model.started.wait()
        start = clock.time()
        waiting = [asyncio.ensure_future(m(i)) for i in range(2)]
        await model.wait_batches(2)
        # The free worker held the partial batch for max_wait, no longer.
        assert clock.time() - start == pytest.approx(0.010)
        assert model.batches[1] == [0, 1]
        model.gate.set()
        await asyncio.gather(busy, *waiting)


async def test_max_wait_ends_early_when_the_batch_fills(clock: FakeClockLoop) -> None:
    model = GatedModel()
    model.gate.clear()
    async with asyncml.load(model, workers=2, max_batch_size=3, max_wait=10.0) as m:
        busy = asyncio.ensure_future(m("a"))
        await model.started.wait()
        full = [asyncio.ensure_future(m(i)) for i in range(3)]
        await model.wait_batches(2)
        assert clock.time() == 0
        model.gate.set()
        await asyncio.gather(busy, *full)


class SendsAhead(InlineExecutor):
    """One worker that takes one batch ahead, as a process worker does (two model instances:
    one for the batch it runs, one for the batch sent ahead)."""

    def __init__(self) -> None:
        super().__init__(2)

    @property
    def capacity(self) -> int:
        return 1

    @property
    def prefetch(self) -> int:
        return 1


async def test_a_busy_pool_is_sent_only_full_batches_ahead() -> None:
    model = GatedModel()
    model.gate.clear()
    async with asyncml.load(model, executor=SendsAhead(), max_batch_size=4) as m:
        busy = asyncio.ensure_future(m("a"))
        await model.started.wait()
        calls = [asyncio.ensure_future(m(i)) for i in range(3)]
        await until(lambda: m.statistics().queued == 3)
        await asyncio.sleep(0)  # a dispatch, if one had been scheduled, runs here
        assert m.statistics().queued == 3  # a partial batch waits for a free worker
        calls.append(asyncio.ensure_future(m(3)))
        await until(lambda: m.statistics().queued == 0)  # full: sent ahead
        calls += [asyncio.ensure_future(m(i)) for i in range(4, 8)]
        await until(lambda: m.statistics().queued == 4)
        await asyncio.sleep(0)
        assert m.statistics().queued == 4  # one batch ahead per worker, no more
        model.gate.set()
        assert await asyncio.gather(busy, *calls) == [("out", x) for x in ["a", *range(8)]]
    assert model.batches == [["a"], [0, 1, 2, 3], [4, 5, 6, 7]]


async def test_an_idle_pool_ignores_max_wait(clock: FakeClockLoop) -> None:
    model = GatedModel()
    async with asyncml.load(model, workers=2, max_batch_size=64, max_wait=5.0) as m:
        assert await m(1) == ("out", 1)
        assert clock.time() == 0


async def test_failing_items_are_isolated_from_their_batch() -> None:
    model = GatedModel(poison={3, 7})
    model.gate.clear()
    async with asyncml.load(model, max_batch_size=16) as m:
        blocker = asyncio.ensure_future(m(100))
        await model.started.wait()
        calls = [asyncio.ensure_future(m(i)) for i in range(10)]
        await until(lambda: m.statistics().queued == 10)
        model.gate.set()
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        await blocker
    for i, outcome in enumerate(outcomes):
        if i in (3, 7):
            assert isinstance(outcome, asyncml.ModelError)
            assert isinstance(outcome.cause, ValueError)
            assert outcome.model == "GatedModel"
            assert f"poison {i}" in str(outcome)
        else:
            assert outcome == ("out", i)


async def test_an_item_whose_deadline_passes_in_the_queue_is_never_computed(
    clock: FakeClockLoop,
) -> None:
    model = GatedModel()
    model.gate.clear()
    async with asyncml.load(model) as m:
        blocker = asyncio.ensure_future(m("blocker"))
        await model.started.wait()
        late = asyncio.ensure_future(m("late", timeout=1.0))
        with pytest.raises(asyncml.ItemTimeout) as caught:
            await late
        assert isinstance(caught.value, TimeoutError)
        assert clock.time() == pytest.approx(1.0)
        model.gate.set()
        await blocker
        assert await m("after") == ("out", "after")
        stats = m.statistics()
    assert "late" not in model.seen
    assert stats.timed_out == 1


async def test_a_deadline_passing_while_the_batch_runs_times_out_the_caller(
    clock: FakeClockLoop,
) -> None:
    model = GatedModel()
    model.gate.clear()
    async with asyncml.load(model, timeout=2.0) as m:
        call = asyncio.ensure_future(m("x"))
        with pytest.raises(asyncml.ItemTimeout):
            await call
        assert clock.time() == pytest.approx(2.0)
        model.gate.set()
        assert await m("y", timeout=math.inf) == ("out", "y")


async def test_a_cancelled_call_is_removed_before_dispatch() -> None:
    model = GatedModel()
    model.gate.clear()
    async with asyncml.load(model) as m:
        blocker = asyncio.ensure_future(m("blocker"))
        await model.started.wait()
        doomed = asyncio.ensure_future(m("doomed"))
        kept = asyncio.ensure_future(m("kept"))
        await until(lambda: m.statistics().queued == 2)
        doomed.cancel()
        model.gate.set()
        assert await kept == ("out", "kept")
        await blocker
        stats = m.statistics()
    assert doomed.cancelled()
    assert "doomed" not in model.seen
    assert stats.cancelled == 1


async def test_call_nowait_raises_overloaded_when_the_queue_is_full() -> None:
    model = GatedModel()
    model.gate.clear()
    async with asyncml.load(model, max_queue=2) as m:
        running = m.call_nowait(0)
        await model.started.wait()
        queued = [m.call_nowait(1), m.call_nowait(2)]
        with pytest.raises(asyncml.Overloaded, match="overloaded"):
            m.call_nowait(3)
        model.gate.set()
        assert await asyncio.gather(running, *queued) == [("out", i) for i in range(3)]


async def test_a_full_queue_makes_callers_wait_in_order() -> None:
    model = GatedModel()
    model.gate.clear()
    async with asyncml.load(model, max_queue=2, max_batch_size=1) as m:
        running = asyncio.ensure_future(m(0))
        await model.started.wait()
        calls = [asyncio.ensure_future(m(i)) for i in range(1, 6)]
        await until(lambda: m.statistics().queued == 2)
        assert m.statistics().submitted == 3  # the other three wait for room
        model.gate.set()
        assert await asyncio.gather(running, *calls) == [("out", i) for i in range(6)]
    assert model.seen == list(range(6))


async def test_cancelled_items_make_room_in_a_full_queue() -> None:
    model = GatedModel()
    model.gate.clear()
    async with asyncml.load(model, max_queue=1) as m:
        running = m.call_nowait(0)
        await model.started.wait()
        m.call_nowait(1).cancel()
        assert m.call_nowait(2) is not None
        model.gate.set()
        await running


async def test_waiting_for_room_honours_the_deadline(clock: FakeClockLoop) -> None:
    model = GatedModel()
    model.gate.clear()
    async with asyncml.load(model, max_queue=1) as m:
        running = m.call_nowait(0)
        await model.started.wait()
        queued = m.call_nowait(1)
        with pytest.raises(asyncml.ItemTimeout):
            await m(2, timeout=0.5)
        assert clock.time() == pytest.approx(0.5)
        model.gate.set()
        await asyncio.gather(running, queued)
        assert m.statistics().submitted == 2


async def test_map_returns_results_in_input_order() -> None:
    async def reverse_sleep(batch: list[int]) -> list[int]:
        return [x * 10 for x in batch]

    async with asyncml.load(reverse_sleep, workers=3, max_batch_size=7, max_queue=20) as m:
        assert await m.map(range(100)) == [x * 10 for x in range(100)]


async def test_map_raises_the_first_error_with_its_index() -> None:
    model = GatedModel(poison={5})
    async with asyncml.load(model, max_batch_size=4) as m:
        with pytest.raises(asyncml.ModelError) as caught:
            await m.map(range(10))
        assert caught.value.index == 5
        assert "(item 5)" in str(caught.value)
        results = await m.map(range(10), return_exceptions=True)
    assert isinstance(results[5], asyncml.ModelError)
    assert [r for i, r in enumerate(results) if i != 5] == [("out", i) for i in range(10) if i != 5]


async def test_as_completed_yields_every_item_once() -> None:
    model = GatedModel(poison={2})
    async with asyncml.load(model, max_batch_size=4, max_queue=8) as m:
        seen = {}
        async for index, result in m.as_completed(range(50), return_exceptions=True):
            assert index not in seen
            seen[index] = result
        stats = m.statistics()
    assert sorted(seen) == list(range(50))
    assert isinstance(seen[2], asyncml.ModelError)
    assert seen[2].index == 2
    assert seen[10] == ("out", 10)
    assert stats.submitted == 50


async def test_as_completed_keeps_outstanding_items_bounded() -> None:
    model = GatedModel()
    async with asyncml.load(model, max_batch_size=4, max_queue=8) as m:
        peak = 0

        def endless() -> Iterator[int]:
            i = 0
            while True:
                yield i
                i += 1

        async for index, _ in m.as_completed(endless()):
            stats = m.statistics()
            peak = max(peak, stats.queued + stats.in_flight)
            if index >= 200:
                break
        await until(lambda: m.statistics().in_flight == 0)
        stats = m.statistics()
    assert peak <= 8
    assert stats.submitted == stats.completed + stats.cancelled


async def test_statistics_add_up() -> None:
    model = GatedModel(poison={1})
    async with asyncml.load(model, max_batch_size=4) as m:
        await m.map(range(10), return_exceptions=True)
        stats = m.statistics()
    assert stats.submitted == 10
    assert stats.completed == 9
    assert stats.failed == 1
    assert stats.batches == sum(stats.batch_sizes.values())
    assert stats.latency.count == 10
    assert stats.mean_batch_size > 0


async def test_map_reports_a_refused_item_in_its_place(clock: FakeClockLoop) -> None:
    model = GatedModel()
    model.gate.clear()
    async with asyncml.load(model, max_queue=1, max_batch_size=1) as m:
        blocker = m.call_nowait("blocker")
        await model.started.wait()
        clock.call_later(5.0, model.gate.set)
        results = await m.map(["a", "b"], timeout=1.0, return_exceptions=True)
        await blocker
    assert isinstance(results[0], asyncml.ItemTimeout)  # queued, expired before dispatch
    assert isinstance(results[1], asyncml.ItemTimeout)  # never found room
    assert [r.index for r in results if isinstance(r, asyncml.AsyncmlError)] == [0, 1]


@pytest.mark.parametrize("how", ["map", "as_completed"])
async def test_items_refused_by_a_closing_model_are_reported_in_their_places(how: str) -> None:
    model = GatedModel()
    model.gate.clear()
    async with asyncml.load(model, max_queue=2, max_batch_size=1) as m:
        if how == "map":
            running = asyncio.ensure_future(m.map(range(10), return_exceptions=True))
        else:
            running = asyncio.ensure_future(
                _collect(m.as_completed(range(10), return_exceptions=True))
            )
        await until(lambda: m.statistics().queued == 2)
        model.gate.set()  # leaving the block closes the model while the rest are submitted
    results = await running
    closed = [r for r in results if isinstance(r, asyncml.Closed)]
    assert closed
    # map answers every item; as_completed stops taking items at the first refusal.
    assert len(results) == 10 if how == "map" else len(closed) == 1
    assert all(isinstance(error.index, int) for error in closed)


async def _collect(pairs: Any) -> list[Any]:
    return [value async for _, value in pairs]


async def test_room_left_by_cancelled_items_goes_to_the_callers_waiting_first() -> None:
    model = GatedModel()
    model.gate.clear()
    async with asyncml.load(model, max_queue=2, max_batch_size=1) as m:
        first = asyncio.ensure_future(m("A"))
        await model.started.wait()
        queued = [asyncio.ensure_future(m(x)) for x in "BC"]
        await until(lambda: m.statistics().queued == 2)
        waiting = asyncio.ensure_future(m("D"))
        await asyncio.sleep(0)
        for call in queued:
            call.cancel()
        await until(lambda: m.statistics().queued == 1)  # D took the room at once
        later = asyncio.ensure_future(m("E"))
        model.gate.set()
        assert list(await asyncio.gather(first, waiting, later)) == [("out", x) for x in "ADE"]
    assert model.seen == ["A", "D", "E"]


async def test_map_over_more_items_than_fit_stops_at_the_first_failure() -> None:
    model = GatedModel(poison=[0])
    async with asyncml.load(model, max_queue=4, max_batch_size=1) as m:
        with pytest.raises(asyncml.ModelError, match="poison 0") as caught:
            await m.map(range(10_000))
    assert caught.value.index == 0
    assert len(model.seen) < 20  # not the whole input


async def test_as_completed_stops_taking_items_once_the_model_closed() -> None:
    endless = Endless()
    model = GatedModel()
    async with asyncml.load(model, max_queue=4) as m:
        results = asyncio.ensure_future(_collect(m.as_completed(endless, return_exceptions=True)))
        await until(lambda: endless.pulled > 8)
    got = await results
    assert isinstance(got[-1], asyncml.Closed)
    assert sum(isinstance(r, asyncml.Closed) for r in got) == 1
    assert endless.pulled == len(got)


async def test_a_huge_max_batch_size_costs_nothing_up_front() -> None:
    async with asyncml.load(GatedModel(), max_batch_size=10**12) as m:
        assert await m(1) == ("out", 1)
        assert m.statistics().batch_sizes == {1: 1}


async def test_a_nan_timeout_is_refused() -> None:
    async with asyncml.load(GatedModel()) as m:
        with pytest.raises(ValueError, match="timeout must be a number of seconds, got nan"):
            await m(1, timeout=float("nan"))
        with pytest.raises(TypeError, match="timeout must be a number of seconds, got '5'"):
            await m(1, timeout="5")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="got True"):
            await m(1, timeout=True)
    with pytest.raises(ValueError, match="timeout must be a number of seconds > 0"):
        asyncml.load(GatedModel(), timeout="5")  # type: ignore[call-overload]


async def test_closing_as_completed_cancels_the_outstanding_items() -> None:
    model = GatedModel()
    async with asyncml.load(model, max_batch_size=2, max_queue=6) as m:
        results = m.as_completed(range(100))
        async with contextlib.aclosing(results):
            async for index, _ in results:
                if index == 3:
                    model.gate.clear()
                    break
        model.gate.set()
    stats = m.statistics()  # cancelled items leave the queue when it is next served
    assert stats.submitted < 20
    assert stats.cancelled > 0
    assert stats.submitted == stats.completed + stats.cancelled


async def test_a_call_is_a_coroutine_that_tasks_accept() -> None:
    async with asyncml.load(GatedModel()) as m, asyncio.TaskGroup() as group:
        task = group.create_task(m(7))
    assert task.result() == ("out", 7)
