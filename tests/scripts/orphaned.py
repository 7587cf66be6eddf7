"""Starts two process workers, prints their pids, then waits to be killed; with ``busy``,
the workers are running batches that never end (printed as ``busy``) when it is."""

from __future__ import annotations

import asyncio
import sys

from tests.process_models import hang_on_13, pids

import asyncml


async def main(busy: bool) -> None:
    async with (
        asyncml.load(pids, executor="process", workers=2, max_batch_size=1) as model,
        asyncml.load(hang_on_13, executor="process", workers=2, max_batch_size=1) as hung,
    ):
        workers = set(await model.map(range(20)))
        print(" ".join(str(pid) for pid in sorted(workers)), flush=True)
        if busy:
            running = asyncio.ensure_future(hung.map([13, 13]))
            await asyncio.sleep(0.5)
            print("busy", flush=True)
            await running
        await asyncio.Event().wait()  # until SIGKILL


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:] == ["busy"]))
