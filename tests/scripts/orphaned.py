"""Starts two process workers, prints their pids, then waits to be killed."""

from __future__ import annotations

import asyncio

from tests.process_models import pids

import asyncml


async def main() -> None:
    async with asyncml.load(pids, executor="process", workers=2, max_batch_size=1) as model:
        workers = set(await model.map(range(20)))
        print(" ".join(str(pid) for pid in sorted(workers)), flush=True)
        await asyncio.Event().wait()  # until SIGKILL


if __name__ == "__main__":
    asyncio.run(main())
