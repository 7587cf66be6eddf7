"""Pipelines: order, flat-maps, backpressure, retries, rate limits, dead letters, thresholds."""

from __future__ import annotations

import asyncio
import io
import logging
import pickle
import random
import threading
from pathlib import Path
from typing import Any

import orjson
import pytest
from rich.console import Console

import asyncml
from asyncml.pipeline import (
    DeadLetter,
    LogProgress,
    Pipeline,
    PipelineFailed,
    Retry,
    RichProgress,
    stage,
)
from tests.fakeclock import FakeClockLoop


def inline(fn: Any, **options: Any) -> asyncml.pipeline.Stage:
    return stage(fn, executor="inline", **options)


def double(x: int) -> int:
    return 2 * x


class InFlightSpy:
    """An async stage function that records how many calls run at once, and when each ran."""

    def __init__(self, delay: float = 0.0) -> None:
        self.now = 0
        self.most = 0
        self.delay = delay

    async def __call__(self, item: int) -> int:
        self.now += 1
        self.most = max(self.most, self.now)
        try:
            await asyncio.sleep(self.delay)
        finally:
            self.now -= 1
        return item


async def test_outputs_keep_input_order_under_random_delays(clock: FakeClockLoop) -> None:
    rng = random.Random(0)
    delays = [rng.random() for _ in range(300)]

    async def jittery(item: int) -> int:
        await asyncio.sleep(delays[item])
        return item

    async def jittery_again(item: int) -> int:
        await asyncio.sleep(delays[-1 - item])
        return item + 1000

    pipeline = Pipeline(
        stage(jittery, concurrency=20), stage(jittery_again, concurrency=7), inline(double)
    )
    async with pipeline.stream(range(300), max_in_flight=50) as outputs:
        got = [output async for output in outputs]
    assert got == [2 * (i + 1000) for i in range(300)]


async def test_as_completed_yields_every_output_once_with_its_index(clock: FakeClockLoop) -> None:
    async def slow_evens(item: int) -> int:
        await asyncio.sleep(1.0 if item % 2 == 0 else 0.0)
        return item

    pipeline = Pipeline(stage(slow_evens, concurrency=10))
    async with pipeline.stream(range(10), ordered=False, with_index=True) as outputs:
        got = [pair async for pair in outputs]
    assert sorted(got) == [(i, i) for i in range(10)]
    assert [index for index, _ in got[:5]] == [1, 3, 5, 7, 9]  # the quick ones first


async def test_filters_and_flat_maps_keep_each_items_outputs_in_order() -> None:
    def explode(n: int) -> list[int]:
        return [n * 10 + k for k in range(n % 4)]  # 0, 1, 2 or 3 outputs

    pipeline = Pipeline(stage(explode, executor="thread", flat=True, workers=2), inline(double))
    async with pipeline.stream(range(40), with_index=True) as outputs:
        got = [pair async for pair in outputs]
    expected = [(n, 2 * (n * 10 + k)) for n in range(40) for k in range(n % 4)]
    assert got == expected
    assert outputs.summary().outputs == len(expected)


def spread(n: int) -> Any:
    """Flat-map outputs for ``n``: not iterable for 3, a generator that fails for 5."""
    if n == 3:
        return 3

    def outputs() -> Any:
        yield n
        if n == 5:
            raise ValueError("no second output for 5")
        yield -n

    return outputs()


async def aspread(n: int) -> Any:
    return spread(n)


def spread_batch(batch: list[int]) -> list[Any]:
    return [spread(n) for n in batch]


@pytest.mark.parametrize(
    "flat_stage",
    [
        stage(spread, executor="inline", flat=True),
        stage(aspread, flat=True),
        stage(spread, executor="thread", flat=True),
        stage(spread_batch, executor="thread", batched=True, flat=True),
    ],
    ids=["inline", "async", "thread", "batched"],
)
async def test_a_flat_stage_that_cannot_list_an_items_outputs_fails_that_item(
    flat_stage: Any,
) -> None:
    letters: list[DeadLetter] = []
    summary = await Pipeline(flat_stage).run(range(7), dead_letters=letters.append)
    assert summary.outputs == 10  # two outputs for each of 0, 1, 2, 4 and 6
    failed = {letter.index: (letter.error_type, letter.message) for letter in letters}
    assert failed == {
        3: ("TypeError", "a flat stage must return an iterable of outputs, not int"),
        5: ("ValueError", "no second output for 5"),
    }


async def test_a_slow_stage_bounds_what_runs_and_waits_before_it(clock: FakeClockLoop) -> None:
    fast, slow = InFlightSpy(), InFlightSpy(delay=1.0)
    read = 0

    def source() -> Any:
        nonlocal read
        for i in range(500):
            read += 1
            yield i

    pipeline = Pipeline(
        stage(fast, name="fast", concurrency=8, queue=10),
        stage(slow, name="slow", concurrency=3, queue=5),
    )
    async with pipeline.stream(source(), max_in_flight=10_000) as outputs:
        seen = 0
        async for _ in outputs:
            seen += 1
            if seen == 5:
                stats = outputs.statistics()
                # Blocked by the slow stage: the queues are full, and the source read only
                # what was delivered, what fits in the queues and stages, and one chunk.
                assert stats.stages[1].queued <= 5 + 1
                assert read <= seen + (10 + 8) + (5 + 1 + 3) + 10
    assert seen == 500
    assert fast.most <= 8
    assert slow.most == 3


async def test_the_window_bounds_source_items_inside_the_pipeline(clock: FakeClockLoop) -> None:
    spy = InFlightSpy(delay=0.5)
    pipeline = Pipeline(stage(spy, concurrency=1000, queue=10_000))
    async with pipeline.stream(range(2000), max_in_flight=100) as outputs:
        assert [o async for o in outputs] == list(range(2000))
    assert spy.most <= 100 + 255  # the window, plus the source's last chunk


async def test_retries_back_off_exponentially_on_the_loop_clock(clock: FakeClockLoop) -> None:
    tries: list[float] = []

    async def flaky(item: int) -> int:
        tries.append(clock.time())
        if len(tries) < 4:
            raise ConnectionError("refused")
        return item

    retry = Retry(attempts=4, backoff=1.0, jitter=False, on=(ConnectionError,))
    summary = await Pipeline(stage(flaky, retry=retry)).run([7])
    assert tries == [0.0, 1.0, 3.0, 7.0]  # waits of 1, 2 and 4 seconds
    assert summary.failed == 0
    assert summary.stages[0].retries == 3


async def test_each_stage_counts_the_items_it_received_once() -> None:
    tries: dict[int, int] = {}

    def flaky(item: int) -> int:
        tries[item] = tries.get(item, 0) + 1
        if item % 2 and tries[item] == 1:
            raise ConnectionError("try again")
        return item

    def repeat(item: int) -> list[int]:
        return [item] * (item % 3)

    pipeline = Pipeline(
        inline(flaky, retry=Retry(attempts=2, backoff=0.0)),
        inline(repeat, flat=True),
        stage(double, executor="thread"),
    )
    summary = await pipeline.run(range(30))
    first, split, _ = summary.stages
    assert first.retries == 15  # retried items are not received twice
    assert [s.received for s in summary.stages] == [30, 30, split.emitted]
    assert split.emitted == sum(item % 3 for item in range(30))
    for counters in summary.stages:
        assert counters.received == counters.done + counters.withdrawn
        assert counters.in_flight == counters.queued == 0


async def test_only_the_named_errors_are_retried(clock: FakeClockLoop) -> None:
    calls = 0

    async def broken(item: int) -> int:
        nonlocal calls
        calls += 1
        raise KeyError(item)

    letters: list[DeadLetter] = []
    retry = Retry(attempts=5, on=(ConnectionError,))
    await Pipeline(stage(broken, retry=retry)).run([1], dead_letters=letters.append)
    assert calls == 1
    assert letters[0].attempts == 1


async def test_retry_after_sets_the_least_delay() -> None:
    class Busy(Exception):
        retry_after = 30.0

    retry = Retry(backoff=0.1, jitter=False)
    assert retry.delay(Busy(), 1) == 30.0
    assert retry.delay(ValueError(), 2) == pytest.approx(0.2)


async def test_worker_errors_are_retried_by_their_original_type() -> None:
    attempts: dict[int, int] = {}

    def flaky(item: int) -> int:
        attempts[item] = attempts.get(item, 0) + 1
        if item == 3 and attempts[item] < 3:
            raise ConnectionError("try again")
        if item == 5:
            raise ValueError("never")
        return item

    retry = Retry(attempts=3, backoff=0.0, on=(ConnectionError,))
    letters: list[DeadLetter] = []
    pipeline = Pipeline(stage(flaky, executor="thread", workers=2, retry=retry))
    summary = await pipeline.run(range(8), dead_letters=letters.append)
    assert attempts[3] == 3
    assert attempts[5] == 1
    assert [letter.index for letter in letters] == [5]
    assert summary.outputs == 7


async def test_dead_letters_hold_the_item_stage_error_and_attempts(tmp_path: Path) -> None:
    def parse(text: str) -> int:
        return int(text)

    path = tmp_path / "dead.jsonl"
    pipeline = Pipeline(inline(str.strip, name="strip"), stage(parse, executor="thread", retry=2))
    async with pipeline.stream([" 1", "two ", "3"], dead_letters=path) as outputs:
        assert [o async for o in outputs] == [1, 3]
    lines = (await asyncio.to_thread(path.read_bytes)).splitlines()
    assert len(lines) == 1
    letter = orjson.loads(lines[0])
    assert {k: v for k, v in letter.items() if k != "traceback"} == {
        "index": 1,
        "stage": "parse",
        "item": "two",
        "error_type": "ValueError",
        "message": "invalid literal for int() with base 10: 'two'",
        "attempts": 2,
    }
    assert "in parse" in letter["traceback"]
    assert outputs.summary().dead_letters[0].item == "two"


async def test_an_async_stage_timeout_is_a_failure(clock: FakeClockLoop) -> None:
    async def hangs(item: int) -> int:
        await asyncio.sleep(100 if item == 1 else 0)
        return item

    letters: list[DeadLetter] = []
    summary = await Pipeline(stage(hangs, timeout=5)).run(range(3), dead_letters=letters.append)
    assert summary.outputs == 2
    assert (letters[0].index, letters[0].error_type) == (1, "TimeoutError")
    assert clock.time() == 5.0


async def test_too_many_failures_stop_the_run_with_a_clear_error() -> None:
    def fails_on_sevens(item: int) -> int:
        if item % 7 == 0:
            raise ValueError(f"bad {item}")
        return item

    pipeline = Pipeline(inline(fails_on_sevens))
    with pytest.raises(PipelineFailed, match=r"3 items failed, over max_failures=2") as caught:
        await pipeline.run(range(1000), max_failures=2)
    assert caught.value.failed == 3
    assert caught.value.last is not None
    assert caught.value.last.index == 14


async def test_a_failure_fraction_is_judged_over_enough_items() -> None:
    def fails_on_fifties(item: int) -> int:
        if item % 50 == 0:
            raise ValueError("bad")
        return item

    # 2% fail: under a 5% limit the run finishes, over a 1% limit it stops.
    summary = await Pipeline(inline(fails_on_fifties)).run(range(1000), max_failures=0.05)
    assert summary.failed == 20
    with pytest.raises(PipelineFailed, match=r"max_failures=0\.01"):
        await Pipeline(inline(fails_on_fifties)).run(range(1000), max_failures=0.01)


async def test_a_rate_limit_spaces_starts_on_the_loop_clock(clock: FakeClockLoop) -> None:
    starts: list[float] = []

    async def call(item: int) -> int:
        starts.append(clock.time())
        return item

    limited = stage(call, concurrency=10, rate=asyncml.RateLimit(per_second=4, burst=2))
    await Pipeline(limited).run(range(6))
    assert starts == [0.0, 0.0, 0.25, 0.5, 0.75, 1.0]


async def test_a_rate_limit_spaces_the_starts_of_sync_stages_too(clock: FakeClockLoop) -> None:
    starts: list[float] = []

    def call(item: int) -> int:
        starts.append(clock.time())
        return item

    limited = inline(call, rate=asyncml.RateLimit(per_second=4, burst=2))
    await Pipeline(limited).run(range(6))
    assert starts == [0.0, 0.0, 0.5, 0.5, 1.0, 1.0]  # bursts of 2, 4 a second


async def test_a_model_stage_batches_items_from_all_its_feeders() -> None:
    sizes: list[int] = []

    class Summer(asyncml.Model[int, int]):
        max_batch_size = 16

        def predict(self, batch: list[int]) -> list[int]:
            sizes.append(len(batch))
            return [item + 1 for item in batch]

    pipeline = Pipeline(inline(double), stage(Summer, workers=1, concurrency=64))
    async with pipeline.stream(range(500)) as outputs:
        assert [o async for o in outputs] == [2 * i + 1 for i in range(500)]
    assert max(sizes) == 16
    assert sum(sizes) == 500


async def test_leaving_early_stops_every_stage() -> None:
    gate = asyncio.Event()

    async def waits(item: int) -> int:
        if item > 5:
            await gate.wait()
        return item

    pipeline = Pipeline(stage(waits, concurrency=4), stage(double, executor="thread"))
    async with pipeline.stream(range(10**9)) as outputs:
        async for output in outputs:
            if output == 10:
                break
    stats = outputs.statistics()
    assert stats.read < 10**4


async def test_a_failing_source_ends_the_run_with_its_error() -> None:
    def source() -> Any:
        yield 1
        raise OSError("disk gone")

    with pytest.raises(PipelineFailed, match=r"the source failed after 1 items: OSError: disk"):
        await Pipeline(inline(double)).run(source())
    with pytest.raises(PipelineFailed) as caught:
        await Pipeline(inline(double)).run(source())
    assert isinstance(caught.value.__cause__, OSError)  # where the source raised, traced


async def test_dead_letters_of_items_json_cannot_hold_are_written(tmp_path: Path) -> None:
    def refuse(item: Any) -> Any:
        raise ValueError("bad record")

    path = tmp_path / "dead.jsonl"
    items = [{1: "a"}, 2**70, threading.Lock()]
    summary = await Pipeline(inline(refuse)).run(items, dead_letters=path)
    assert summary.failed == 3
    lines = (await asyncio.to_thread(path.read_bytes)).splitlines()
    written = [orjson.loads(line)["item"] for line in lines]
    assert written[:2] == [{"1": "a"}, str(2**70)]
    assert written[2].startswith("<unlocked _thread.lock object")
    failed = PipelineFailed("stopped", failed=1, last=summary.dead_letters[2])
    assert pickle.loads(pickle.dumps(failed)).last.item == repr(items[2])


async def test_async_sources_are_pulled_as_room_frees_up(clock: FakeClockLoop) -> None:
    async def source() -> Any:
        for i in range(20):
            await asyncio.sleep(0.1)
            yield i

    summary = await Pipeline(inline(double)).run(source())
    assert (summary.items, summary.outputs) == (20, 20)


async def test_progress_draws_a_line_per_stage_from_statistics() -> None:
    screen = io.StringIO()
    display = RichProgress(Console(file=screen, width=120, force_terminal=False))
    pipeline = Pipeline(inline(double, name="twice"), inline(str, name="text"))
    await pipeline.run(range(100), progress=display)
    drawn = screen.getvalue()
    assert "twice" in drawn
    assert "text" in drawn
    assert "100/100" in drawn


async def test_log_progress_writes_one_line_per_stage(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="asyncml.pipeline")
    await Pipeline(inline(double, name="twice")).run(range(10), progress=LogProgress())
    assert any("stage twice: 10/10 done" in message for message in caplog.messages)


def test_stage_options_are_checked() -> None:
    async def fetch(item: int) -> int:
        return item

    with pytest.raises(TypeError, match="runs on the event loop"):
        stage(fetch, executor="thread")
    with pytest.raises(TypeError, match="cannot be timed out"):
        stage(double, executor="inline", timeout=1.0)
    with pytest.raises(ValueError, match="concurrency must be an int >= 1"):
        stage(double, concurrency=0)
    with pytest.raises(ValueError, match="stage names must be unique"):
        Pipeline(double, double)
    with pytest.raises(ValueError, match="attempts must be at least 1"):
        Retry(attempts=0)
