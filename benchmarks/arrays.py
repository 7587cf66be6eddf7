"""Large arrays through workers: asyncml's thread executor against its process executor.

One item is a 1000x1000 array, float32 by default (4 MB; ``--dtype float64`` for 8 MB).
Models:

``identity``  the array comes back: 4 MB cross each way per item (the worst case for
              processes; threads pass a reference)
``sum``       a cheap reduction, ``float(x.sum())``: 4 MB go, a float comes back
``project``   ``x @ W`` with a fixed 1000x100 ``W``: some compute (BLAS), 400 KB come back

Systems:

``thread``    thread workers: they read the caller's array where it is
``process``   process workers, the caller's arrays ordinary numpy arrays: the parent copies
              each into shared memory once (and each array that comes back out once), so
              the ratio to ``thread`` is about (copy + model) / model
``shared``    process workers, the caller's arrays made with ``asyncml.shared_array``: the
              worker maps them where they are, and an output that is a view of its input
              comes back as such, so nothing is copied (``project``'s own output still is)

Each measurement runs in a fresh process: ``callers`` closed-loop coroutines each doing
``await model(x)`` over ``items`` calls (a pool of distinct arrays, reused), after one
untimed pass that starts the workers, sizes their shared memory and checks the outputs.
Repeats are interleaved (thread, process, shared, thread, ...) and the table gives
medians: ms per item, and each process system's ratio to ``thread`` within each repeat;
``--json PATH`` writes the rows (``model``, ``dtype``, per-system ms per item and per-repeat
figures, ``ratio`` and ``shared_ratio``).

Run:  python benchmarks/arrays.py [--models identity,sum] [--items 1000] [--repeats 3]
      [--workers 1] [--callers 8] [--max-batch-size 4] [--dtype float32] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

import asyncml

SHAPE = (1000, 1000)
#: Distinct input arrays; calls cycle through them, so memory stays small.
POOL = 8
SYSTEMS: tuple[Literal["thread", "process", "shared"], ...] = ("thread", "process", "shared")


def identity(batch: list[Any]) -> list[Any]:
    return batch


def sum_each(batch: list[Any]) -> list[float]:
    return [float(x.sum()) for x in batch]


#: ``project``'s matrix, the same in every process (each builds it from the seed).
PROJECTION = np.random.default_rng(1).random((SHAPE[1], 100))
PROJECTIONS = {dtype: PROJECTION.astype(dtype) for dtype in ("float32", "float64")}


def project(batch: list[Any]) -> list[Any]:
    return [x @ PROJECTIONS[x.dtype.name] for x in batch]


MODELS = {"identity": identity, "sum": sum_each, "project": project}


@dataclass(frozen=True)
class Case:
    """One measurement: a model on a system, with its load."""

    model: str
    system: Literal["thread", "process", "shared"]
    workers: int
    items: int
    callers: int
    max_batch_size: int
    dtype: str = "float32"


async def measure(case: Case) -> float:
    """Seconds per item of ``case``, in this process.

    Raises:
        AssertionError: an output differs from what the model computes here.
    """
    rng = np.random.default_rng(0)
    pool = [rng.random(SHAPE).astype(case.dtype) for _ in range(POOL)]
    if case.system == "shared":
        pool = [_shared_copy(array) for array in pool]
    predict = MODELS[case.model]
    expected = predict(pool)
    async with asyncml.load(
        predict,
        executor="thread" if case.system == "thread" else "process",
        workers=case.workers,
        max_batch_size=case.max_batch_size,
    ) as model:

        async def caller(first: int, count: int, check: bool) -> None:
            for index in range(first, count, case.callers):
                output = await model(pool[index % POOL])
                if check and index < POOL:  # checked, not kept: identity's outputs are large
                    assert np.allclose(output, expected[index]), f"wrong output {index}"

        async def run(count: int, check: bool = False) -> None:
            async with asyncio.TaskGroup() as group:
                for first in range(case.callers):
                    group.create_task(caller(first, count, check))

        # Untimed: starts the workers, sizes their shared memory, checks the outputs (the
        # check costs more than an identity call, so the timed pass leaves it out).
        await run(2 * case.callers * case.max_batch_size, check=True)
        start = time.perf_counter()
        await run(case.items)
        return (time.perf_counter() - start) / case.items


def _shared_copy(array: np.ndarray) -> np.ndarray:
    shared = asyncml.shared_array(array.shape, array.dtype)
    shared[...] = array
    return shared


def run_child(case: Case) -> float:
    """Seconds per item of ``case``, measured in a fresh interpreter.

    Raises:
        RuntimeError: the child failed.
    """
    command = [sys.executable, __file__, "--one", json.dumps(asdict(case))]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        tail = " | ".join(done.stderr.strip().splitlines()[-5:])
        raise RuntimeError(f"{case}: exit status {done.returncode}: {tail}")
    seconds: float = json.loads(done.stdout.strip().splitlines()[-1])
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated")
    parser.add_argument("--items", type=int, default=1000, help="timed calls per measurement")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=1, help="for both executors")
    parser.add_argument("--callers", type=int, default=8)
    parser.add_argument("--max-batch-size", type=int, default=4)
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--json", help="write the rows to this file")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(asyncio.run(measure(Case(**json.loads(args.one))))), flush=True)
        return 0

    models = [name.strip() for name in args.models.split(",") if name.strip()]
    unknown = sorted(set(models) - set(MODELS))
    if unknown:
        parser.error(f"unknown models {unknown}; known: {', '.join(MODELS)}")
    cases = [
        Case(model, system, args.workers, args.items, args.callers, args.max_batch_size, args.dtype)
        for model in models
        for system in SYSTEMS
    ]
    seconds: dict[Case, list[float]] = {case: [] for case in cases}
    for repeat in range(args.repeats):
        for case in cases:
            seconds[case].append(run_child(case))
            per_item = seconds[case][-1] * 1e3
            print(f"repeat {repeat + 1}: {case.model} {case.system} {per_item:.2f} ms/item",
                  file=sys.stderr, flush=True)  # fmt: skip

    print(
        f"{SHAPE[0]}x{SHAPE[1]} {args.dtype} items, workers={args.workers} callers={args.callers} "
        f"max_batch_size={args.max_batch_size}, {args.items} items, "
        f"median of {args.repeats} interleaved repeats"
    )
    print(
        f"{'model':<10}{'thread ms/item':>16}{'process ms/item':>17}{'process/thread':>16}"
        f"{'shared ms/item':>16}{'shared/thread':>15}"
    )
    rows = []
    for model in models:
        thread, process, shared = (seconds[c] for c in cases if c.model == model)
        ratio = statistics.median(p / t for p, t in zip(process, thread, strict=True))
        shared_ratio = statistics.median(s / t for s, t in zip(shared, thread, strict=True))
        print(
            f"{model:<10}{statistics.median(thread) * 1e3:>16.2f}"
            f"{statistics.median(process) * 1e3:>17.2f}{ratio:>15.2f}x"
            f"{statistics.median(shared) * 1e3:>16.2f}{shared_ratio:>14.2f}x"
        )
        rows.append(
            {
                "model": model,
                "dtype": args.dtype,
                "shape": list(SHAPE),
                "thread_ms_per_item": statistics.median(thread) * 1e3,
                "process_ms_per_item": statistics.median(process) * 1e3,
                "shared_ms_per_item": statistics.median(shared) * 1e3,
                "thread_runs_ms": [t * 1e3 for t in thread],
                "process_runs_ms": [p * 1e3 for p in process],
                "shared_runs_ms": [s * 1e3 for s in shared],
                "ratio": ratio,
                "shared_ratio": shared_ratio,
            }
        )
    if args.json:
        with open(args.json, "w") as file:
            json.dump(rows, file, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
