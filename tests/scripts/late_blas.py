"""Thread workers whose model loads scipy's BLAS library in its first predict(), in a fresh
interpreter (so that nothing loaded it before): prints the largest BLAS/OpenMP pool each
batch saw, one line per batch."""

import asyncio

from tests.process_models import late_blas_threads

import asyncml


async def main() -> None:
    async with asyncml.load(late_blas_threads, workers=2, intra_op_threads=1) as model:
        for _ in range(2):
            print(await model(0), flush=True)


asyncio.run(main())
