"""The systems under test, each a driver that runs one workload's inputs and times it.

=================  ==========================================================================
``ceiling``        the batch function called directly on pre-formed batches (best size)
``floor``          bare futures resolved in bulk: the least a per-call asyncio API can cost
``asyncml``        ``await model(x)`` on ``asyncml.load(predict, ...)``
``hand-batcher``   an asyncio.Queue batcher with one thread (:class:`peers.HandBatcher`)
``naive-thread``   ``await loop.run_in_executor(None, predict, [x])`` per item
``naive-process``  the same on a ``ProcessPoolExecutor`` (one worker per core)
``thread-pool``    ``ThreadPoolExecutor(2).map`` over the items; no asyncio
``direct-thread``  ``await loop.run_in_executor(one_thread, predict, [x])``: no batching at all
=================  ==========================================================================
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import time
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from loadgen import Measurement, children_peak_rss_bytes, closed_loop
from peers import BareFutures, HandBatcher
from workloads import BatchFn, init_worker, worker_predict

import asyncml

#: Batch sizes the ceiling tries; it reports the best.
CEILING_BATCH_SIZES = (1, 8, 32, 64, 128, 256)
#: Seconds the ceiling spends on each batch size.
CEILING_SECONDS_PER_SIZE = 0.5
#: Seconds between loop-lag samples.
LOOP_LAG_INTERVAL = 0.005


@dataclass(frozen=True)
class BatchConfig:
    """How asyncml (and, for its batch size, the hand batcher) is set up."""

    workers: int = 1
    max_batch_size: int = 128
    intra_op_threads: int | Literal["auto"] | None = "auto"
    executor: Literal["thread", "process", "ray"] = "thread"
    #: length-aware batching: ``item_cost=len`` (the texts of W1)
    length_aware: bool = False
    #: with ``length_aware``: the most a batch may cost, padded (items x longest text)
    max_batch_cost: float | None = None

    def label(self) -> str:
        """A short description for tables and JSON rows."""
        label = f"workers={self.workers} max_batch_size={self.max_batch_size}"
        if self.executor != "thread":
            label = f"executor={self.executor} {label}"
        if self.length_aware:
            label += " item_cost=len"
        if self.max_batch_cost is not None:
            label += f" max_batch_cost={self.max_batch_cost:g}"
        if self.intra_op_threads != "auto":
            label += f" intra_op_threads={self.intra_op_threads}"
        return label

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BatchConfig:
        return cls(**data)


@dataclass(frozen=True)
class Job:
    """Everything a driver needs: the model, its inputs, and how to call it."""

    workload: str
    predict: BatchFn
    inputs: list[Any]
    callers: int
    config: BatchConfig
    #: where the workload keeps what it built once (e.g. a trained model), for workers
    cache_dir: Path | None = None


Driver = Callable[[Job], Measurement]

#: Systems that set their own BLAS thread limits; all others run with one BLAS thread.
LIMITS_OWN_THREADS = frozenset(
    {"asyncml", "asyncml-process", "asyncml-length", "asyncml-ray", "ray-serve-handle", "ray-tasks"}
)


def ceiling(job: Job) -> Measurement:
    """The batch function in a plain loop over pre-formed batches, at the best batch size."""
    best: Measurement | None = None
    for size in CEILING_BATCH_SIZES:
        batches = [job.inputs[i : i + size] for i in range(0, len(job.inputs), size)]
        measurement = _time_batches(job.predict, batches, size, slow=job.workload == "W1")
        if best is None or measurement.items / measurement.elapsed_s > best.items / best.elapsed_s:
            best = measurement
    assert best is not None
    return best


def _time_batches(
    predict: BatchFn, batches: list[list[Any]], size: int, *, slow: bool = False
) -> Measurement:
    # Cycles through the batches for CEILING_SECONDS_PER_SIZE. The clock is read about every
    # 1024 items (reading it costs as much as an identity call), or after every call of a
    # slow model.
    check_every = 1 if slow else max(1, 1024 // size)
    calls = items = 0
    start = time.perf_counter()
    while True:
        for batch in batches:
            predict(batch)
            items += len(batch)
            calls += 1
            if calls % check_every == 0:
                elapsed = time.perf_counter() - start
                if elapsed >= CEILING_SECONDS_PER_SIZE:
                    return Measurement(items, elapsed, None, None, batch_size=size)


async def warm_up(call: Callable[[Any], Awaitable[Any]], job: Job) -> None:
    """One untimed call per caller: threads and lazily built pools start here."""
    await closed_loop(call, job.inputs[: job.callers], job.callers)


async def timed_closed_loop(call: Callable[[Any], Awaitable[Any]], job: Job) -> Measurement:
    """The timed closed loop over every input, under a loop-lag monitor."""
    async with asyncml.LoopLagMonitor(interval=LOOP_LAG_INTERVAL) as lag:
        outputs, latencies, elapsed = await closed_loop(call, job.inputs, job.callers)
    measurement = Measurement(len(job.inputs), elapsed, outputs, latencies)
    measurement.loop_lag_p99_ms = lag.statistics().lag.p99_ms
    return measurement


async def floor(job: Job) -> Measurement:
    """Closed-loop callers awaiting bare futures that one callback resolves in bulk."""
    futures = BareFutures()
    await warm_up(futures.submit, job)
    batches, items = futures.batches, futures.items
    measurement = await timed_closed_loop(futures.submit, job)
    measurement.mean_batch_size = (futures.items - items) / (futures.batches - batches)
    return measurement


async def asyncml_model(job: Job) -> Measurement:
    """Closed-loop callers each doing ``await model(x)``."""
    config = job.config
    async with asyncml.load(
        job.predict,
        executor=config.executor,
        workers=config.workers,
        max_batch_size=config.max_batch_size,
        intra_op_threads=config.intra_op_threads,
        item_cost=len if config.length_aware else None,
        max_batch_cost=config.max_batch_cost,
    ) as model:
        await warm_up(model, job)
        before = model.statistics()
        measurement = await timed_closed_loop(model, job)
        after = model.statistics()
    items = after.completed - before.completed
    measurement.mean_batch_size = items / (after.batches - before.batches)
    return measurement


async def hand_batcher(job: Job) -> Measurement:
    """Closed-loop callers on :class:`peers.HandBatcher` with asyncml's max batch size."""
    batcher = HandBatcher(job.predict, job.config.max_batch_size)
    async with batcher.serving():
        await warm_up(batcher, job)
        batches, items = batcher.batches, batcher.items
        measurement = await timed_closed_loop(batcher, job)
    measurement.mean_batch_size = (batcher.items - items) / (batcher.batches - batches)
    return measurement


async def naive_thread(job: Job) -> Measurement:
    """Each call: ``await loop.run_in_executor(None, predict, [x])`` (the default pool)."""
    loop = asyncio.get_running_loop()
    predict = job.predict

    async def call(item: Any) -> Any:
        return (await loop.run_in_executor(None, predict, [item]))[0]

    await warm_up(call, job)
    return await timed_closed_loop(call, job)


async def direct_thread(job: Job) -> Measurement:
    """Each call: ``await loop.run_in_executor(one_thread, predict, [x])``."""
    loop = asyncio.get_running_loop()
    predict = job.predict
    with ThreadPoolExecutor(1) as thread:

        async def call(item: Any) -> Any:
            return (await loop.run_in_executor(thread, predict, [item]))[0]

        await warm_up(call, job)
        return await timed_closed_loop(call, job)


async def naive_process(job: Job) -> Measurement:
    """Each call: ``await loop.run_in_executor(process_pool, predict, [x])``.

    Every worker builds its model in the pool's initializer; a barrier holds them until all
    are ready, so neither start-up nor training is timed.
    """
    loop = asyncio.get_running_loop()
    workers = os.cpu_count() or 1
    ready = multiprocessing.get_context().Barrier(workers)
    with ProcessPoolExecutor(
        workers, initializer=init_worker, initargs=(job.workload, job.cache_dir, ready)
    ) as pool:

        async def call(item: Any) -> Any:
            return (await loop.run_in_executor(pool, worker_predict, [item]))[0]

        # One call per worker starts them all; the barrier makes them wait for each other.
        await asyncio.gather(*(call(item) for item in job.inputs[:workers]))
        await warm_up(call, job)
        measurement = await timed_closed_loop(call, job)
        measurement.worker_peak_rss_bytes = children_peak_rss_bytes()
    return measurement


def thread_pool(job: Job) -> Measurement:
    """``ThreadPoolExecutor(2).map`` over single items: the synchronous recipe."""
    predict = job.predict

    def predict_one(item: Any) -> Any:
        return predict([item])[0]

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(predict_one, job.inputs[:2]))
        start = time.perf_counter()
        outputs = list(pool.map(predict_one, job.inputs))
        elapsed = time.perf_counter() - start
    return Measurement(len(job.inputs), elapsed, outputs, None)


def _sync(driver: Callable[[Job], Coroutine[Any, Any, Measurement]]) -> Driver:
    def run(job: Job) -> Measurement:
        return asyncio.run(driver(job))

    return run


SYSTEMS: dict[str, Driver] = {
    "ceiling": ceiling,
    "floor": _sync(floor),
    "asyncml": _sync(asyncml_model),
    "asyncml-process": _sync(asyncml_model),
    "asyncml-length": _sync(asyncml_model),
    "hand-batcher": _sync(hand_batcher),
    "naive-thread": _sync(naive_thread),
    "naive-process": _sync(naive_process),
    "thread-pool": thread_pool,
    "direct-thread": _sync(direct_thread),
}
