"""Score records with a pure-Python model in worker processes, and survive a crashing record.

Pure-Python code holds the GIL, so threads would run it one at a time; worker processes
run it on every core. One record here crashes its worker (a segfault, as a native library
might on corrupt input): asyncml replaces the worker, retries the batch, narrows it down to
the one record, and every other record is scored exactly once.

Run:  python examples/crash_safe_processes.py
"""

from __future__ import annotations

import asyncio
import ctypes
import time

import asyncml
from asyncml.executors import ProcessExecutor


def score(batch: list[str]) -> list[int]:
    """A CPU-bound, pure-Python score per record."""
    scores = []
    for text in batch:
        if text.startswith("CORRUPT"):
            ctypes.string_at(0)  # stands in for a native library crashing on bad input
        scores.append(sum(ord(char) * (i % 7) for i, char in enumerate(text)) % 1000)
    return scores


async def main() -> None:
    records = [f"record {i} " * 40 for i in range(4_000)]
    records[1234] = "CORRUPT " + records[1234]
    pool = ProcessExecutor(2, max_attempts=2)
    started = time.perf_counter()
    async with asyncml.load(score, executor=pool, max_batch_size=64) as model:
        results = await model.map(records, return_exceptions=True)
    elapsed = time.perf_counter() - started
    failed = {i: r for i, r in enumerate(results) if isinstance(r, asyncml.WorkerCrashed)}
    print(
        f"scored {len(results) - len(failed):,} of {len(records):,} records "
        f"in 2 worker processes in {elapsed:.1f} s"
    )
    for index, error in failed.items():
        print(f"record {index} failed alone: {error.reason}, after {error.attempts} attempts")
    print(f"workers replaced: {pool.restarts}")


if __name__ == "__main__":
    asyncio.run(main())
