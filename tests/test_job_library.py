"""The library side of jobs: ``run_job`` on the event loop (which must never block), and
the ordered-outcomes step that a pipeline can drive with any async callable."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq
import pytest

import asyncml
from asyncml.job import JobProgress, ordered_outcomes, run_job


def triple(batch: list[Any]) -> list[Any]:
    return [{"x3": 3 * row["x"], "tag": row.get("tag")} for row in batch]


def write_jsonl(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"\n".join(lines) + b"\n")


async def test_a_job_never_blocks_the_event_loop(tmp_path: Path) -> None:
    given, output = tmp_path / "in.jsonl", tmp_path / "out.parquet"
    lines = [orjson.dumps({"x": i}) for i in range(500)]
    lines[7] = b"{broken"
    await asyncio.to_thread(write_jsonl, given, lines)
    seen: list[JobProgress] = []
    summary = await run_job(
        triple, given, output, chunk_size=512, commit_rows=100, on_progress=seen.append
    )
    assert (summary.rows, summary.ok, summary.failed, summary.resumed) == (500, 499, 1, 0)
    assert summary.dead_letters == f"{output}.dead.jsonl"
    table = await asyncio.to_thread(pq.read_table, output)
    assert table.column_names == ["id", "x3", "tag"]
    assert table.column("x3").to_pylist() == [3 * i for i in range(500) if i != 7]
    assert seen[0].rows == 0
    assert seen[-1].position == seen[-1].total
    assert [p.rows for p in seen] == sorted(p.rows for p in seen)


async def test_a_running_model_can_be_passed_and_the_journal_left_out(tmp_path: Path) -> None:
    given, output = tmp_path / "in.jsonl", tmp_path / "out.csv"
    await asyncio.to_thread(write_jsonl, given, [b'{"x": %d, "tag": "t"}' % i for i in range(50)])
    async with asyncml.load(triple, max_batch_size=4, max_queue=8) as model:
        summary = await run_job(model, given, output, chunk_size=64, use_journal=False)
    assert summary.ok == 50
    text = await asyncio.to_thread(output.read_text)
    assert text.splitlines()[:2] == ['"id","x3","tag"', '0,0,"t"']
    left = await asyncio.to_thread(lambda: sorted(p.name for p in tmp_path.iterdir()))
    assert left == ["in.jsonl", "out.csv"]


async def slow_triple(batch: list[Any]) -> list[Any]:
    await asyncio.sleep(0.002 * len(batch))  # 500 rows a second
    return [{"x3": 3 * row["x"]} for row in batch]


async def test_chunks_start_small_for_a_model_that_is_slow(tmp_path: Path) -> None:
    """Commits cover whole chunks: a slow model must not get a megabyte of rows at once."""
    given, output = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    pad = "p" * 90
    lines = [b'{"x": %d, "pad": "%s"}' % (i, pad.encode()) for i in range(3_000)]  # 300 KB
    await asyncio.to_thread(write_jsonl, given, lines)
    seen: list[JobProgress] = []
    three = asyncio.Event()

    def progress(report: JobProgress) -> None:
        seen.append(report)
        if len(seen) == 3:  # the start, then two chunks done
            three.set()

    async with asyncml.load(slow_triple, max_batch_size=16, max_queue=64) as model:
        job = asyncio.ensure_future(
            run_job(model, given, output, commit_interval=0.4, on_progress=progress)
        )
        await three.wait()
        job.cancel()
        with pytest.raises(asyncio.CancelledError):
            await job
    first, second = (report.rows for report in seen[1:3])
    assert first <= 40  # 4 KiB of rows, not the whole file
    assert second - first <= 80


def test_chunk_sizes_double_until_the_model_is_slow_then_halve() -> None:
    from asyncml.job._run import _ChunkSizer

    class Source:
        block_bytes = 1 << 20

    source = Source()
    sizer = _ChunkSizer(source, target=1.0)
    sizes = [source.block_bytes]
    for _ in range(10):
        sizer.read()
        sizes.append(source.block_bytes)
    assert sizes == [4 << 10 << n for n in range(9)] + [1 << 20, 1 << 20]
    sizer.took(0.5)
    assert source.block_bytes == 1 << 20
    sizer.took(2.0)
    sizer.read()  # no longer grows
    sizer.took(2.0)
    assert source.block_bytes == 1 << 18


async def batches_of(items: Sequence[Any], size: int) -> AsyncIterator[tuple[int, list[Any]]]:
    for start in range(0, len(items), size):
        yield start, list(items[start : start + size])


async def test_outcomes_come_in_input_order_from_any_async_callable() -> None:
    releases = {i: asyncio.Event() for i in range(12)}
    in_flight, most = 0, 0

    async def stage(item: int) -> int:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        try:
            await releases[item].wait()
            if item == 5:
                raise ValueError("five")
            return item * 10
        finally:
            in_flight -= 1

    async def release_backwards() -> None:
        for item in reversed(range(12)):
            await asyncio.sleep(0)
            releases[item].set()

    async with asyncio.TaskGroup() as group:
        group.create_task(release_backwards())
        results = [
            o async for o in ordered_outcomes(stage, batches_of(range(12), 3), max_in_flight=6)
        ]
    assert [o.tag for o in results] == [0, 3, 6, 9]
    assert [v for o in results for v in o.values] == [
        0,
        10,
        20,
        30,
        40,
        None,
        60,
        70,
        80,
        90,
        100,
        110,
    ]
    error = results[1].errors[2]
    assert isinstance(error, ValueError)
    assert most <= 6 + 3  # the window, plus the batch being queued


async def test_a_batch_larger_than_the_model_queue_still_goes_through() -> None:
    async with asyncml.load(
        lambda batch: [-x for x in batch], max_batch_size=2, max_queue=3
    ) as model:
        results = [o async for o in ordered_outcomes(model, batches_of(range(20), 10))]
    assert [v for o in results for v in o.values] == [-x for x in range(20)]


async def test_closing_early_cancels_the_outstanding_calls() -> None:
    started = asyncio.Event()
    cancelled: list[int] = []

    async def forever(item: int) -> int:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(item)
            raise
        return item

    outcomes = ordered_outcomes(forever, batches_of(range(4), 2))
    next_outcome = asyncio.ensure_future(anext(outcomes))
    await started.wait()
    next_outcome.cancel()
    with pytest.raises(asyncio.CancelledError):
        await next_outcome
    await outcomes.aclose()
    assert sorted(cancelled) == [0, 1, 2, 3]


def test_job_and_io_export_exactly_their_all_with_docstrings() -> None:
    import inspect

    import asyncml.io
    import asyncml.job

    for module in (asyncml.job, asyncml.io):
        public = {name for name in dir(module) if not name.startswith("_")}
        public -= {name for name in public if inspect.ismodule(getattr(module, name))}
        assert public == set(module.__all__)
        for name in module.__all__:
            obj = getattr(module, name)
            if inspect.isclass(obj) or inspect.isfunction(obj):
                assert inspect.getdoc(obj), f"{module.__name__}.{name} has no docstring"


def test_importing_the_job_command_loads_no_pyarrow() -> None:
    import subprocess
    import sys

    code = "import asyncml.job, asyncml.io, asyncml.cli, sys; print('pyarrow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
