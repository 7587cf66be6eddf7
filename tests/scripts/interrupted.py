"""Runs a thread model under load until SIGINT; reports what survived the interrupt."""

from __future__ import annotations

import asyncio
import sys
import threading
import time

import asyncml

outcomes: dict[str, int] = {}


def slow(batch: list[int]) -> list[int]:
    sys.stdout.write("computing\n")  # one write: two workers may print at once
    sys.stdout.flush()
    time.sleep(0.05)  # in a worker thread: fine
    return batch


async def main() -> None:
    async with asyncml.load(slow, workers=2, max_batch_size=4) as model:

        async def caller(i: int) -> None:
            try:
                await model(i)
                outcomes["ok"] = outcomes.get("ok", 0) + 1
            except asyncml.Closed:
                outcomes["closed"] = outcomes.get("closed", 0) + 1

        async with asyncio.TaskGroup() as group:
            for i in range(10_000):
                group.create_task(caller(i))


try:
    asyncio.run(main())
except KeyboardInterrupt:
    alive = [t.name for t in threading.enumerate() if t.name.startswith("asyncml-")]
    print(f"interrupted outcomes={outcomes} alive={alive}", flush=True)
    sys.exit(130)
