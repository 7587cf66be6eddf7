"""Runs a fetch-like → thread → process pipeline until SIGINT; reports what survived."""

from __future__ import annotations

import asyncio
import os
import sys
import threading

import asyncml
from asyncml.pipeline import Pipeline, stage


class Scorer(asyncml.Model[int, int]):
    """Runs in worker processes; says where, so the parent's test can check they exit."""

    max_batch_size = 8

    def setup(self) -> None:
        sys.stdout.write(f"worker {os.getpid()}\n")
        sys.stdout.flush()

    def predict(self, batch: list[int]) -> list[int]:
        return [item * 3 for item in batch]


async def fetch(item: int) -> int:
    await asyncio.sleep(0.001)
    return item


def parse(item: int) -> int:
    return item + 1


async def main() -> None:
    pipeline = Pipeline(
        stage(fetch, concurrency=50),
        stage(parse, executor="thread", workers=2),
        stage(Scorer, executor="process", workers=2),
    )
    async with pipeline.stream(range(10**7)) as outputs:  # ends by itself, eventually
        async for output in outputs:
            if output == 3 * 101:
                print("running", flush=True)


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        alive = [t.name for t in threading.enumerate() if t.name.startswith("asyncml-")]
        print(f"interrupted alive={alive}", flush=True)
        sys.exit(130)
