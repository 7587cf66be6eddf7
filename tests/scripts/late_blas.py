"""Thread workers whose model loads scipy's BLAS library in its first predict(), in a fresh
interpreter (so that nothing loaded it before): prints the largest BLAS/OpenMP pool each
batch saw, one line per batch."""

import asyncio
import importlib

from threadpoolctl import threadpool_info

import asyncml


def late_blas_threads(batch: list[int]) -> list[int]:
    importlib.import_module("scipy.linalg")
    return [max(pool["num_threads"] for pool in threadpool_info()) for _ in batch]


async def main() -> None:
    async with asyncml.load(late_blas_threads, workers=2, intra_op_threads=1) as model:
        for _ in range(2):
            print(await model(0), flush=True)


asyncio.run(main())
