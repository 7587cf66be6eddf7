"""Runs a batch of large arrays on a process worker and, while the worker holds it, prints
its own pid and the worker's; then waits to be killed."""

from __future__ import annotations

import asyncio
import os

import numpy as np
from tests.process_models import HoldsBatches

import asyncml


async def main() -> None:
    arrived: asyncio.Queue[int] = asyncio.Queue()
    held: list[asyncio.StreamWriter] = []  # the worker's batch lasts as long as we do

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        arrived.put_nowait(int(await reader.readline()))

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    arrays = [np.ones((1000, 1000)) for _ in range(2)]
    async with server, asyncml.load(HoldsBatches(port), executor="process") as model:
        batch = asyncio.ensure_future(model.map(arrays))
        worker = await arrived.get()
        print(os.getpid(), worker, flush=True)
        await batch  # until SIGKILL


if __name__ == "__main__":
    asyncio.run(main())
