"""Standardise large frames in worker processes without copying them: ``asyncml.shared_array``.

Each frame is a 1000x1000 float32 image (4 MB; here the bundled digits, scaled up). An
ordinary array crosses to a worker process as a copy, and its output comes back as another;
a frame made with ``asyncml.shared_array`` is mapped by the worker where it lies, the model
standardises it in place, and what comes back is a view of the caller's own frame.

Run:  python examples/shared_arrays.py
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
from sklearn.datasets import load_digits

import asyncml

SIDE = 1000


def standardise(frames: list[np.ndarray]) -> list[np.ndarray]:
    """Zero mean, unit variance, in place; returns the frames it was given."""
    for frame in frames:
        frame -= frame.mean()
        frame /= frame.std() + 1e-6
    return frames


def frames_from_digits(count: int, shared: bool) -> list[np.ndarray]:
    digits = load_digits().images[:count].astype(np.float32)
    scale = np.ones((SIDE // 8, SIDE // 8), np.float32)
    frames = []
    for digit in digits:
        frame = (
            asyncml.shared_array((SIDE, SIDE), np.float32)
            if shared
            else np.empty((SIDE, SIDE), np.float32)
        )
        frame[...] = np.kron(digit, scale)  # each pixel becomes a 125x125 block
        frames.append(frame)
    return frames


async def run(model: asyncml.LoadedModel[np.ndarray, np.ndarray], shared: bool) -> str:
    frames = frames_from_digits(32, shared)
    began = time.perf_counter()
    outputs = await model.map(frames)
    elapsed = time.perf_counter() - began
    in_place = sum(np.shares_memory(out, frame) for out, frame in zip(outputs, frames, strict=True))
    standard = all(abs(out.mean()) < 1e-3 and abs(out.std() - 1) < 1e-3 for out in outputs)
    kind = "shared arrays" if shared else "plain arrays "
    return (
        f"{kind}: {len(outputs)} frames standardised={standard}, {in_place} returned in "
        f"place, {elapsed * 1e3:.0f} ms"
    )


async def main() -> None:
    async with asyncml.load(standardise, executor="process", workers=2, max_batch_size=4) as model:
        await model(asyncml.shared_array((SIDE, SIDE), np.float32))  # workers started
        print(await run(model, shared=False))
        print(await run(model, shared=True))


if __name__ == "__main__":
    asyncio.run(main())
