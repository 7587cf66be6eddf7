"""Load generation and what one measurement records.

Closed loop: ``callers`` coroutines each send their share of the requests one at a time,
awaiting each answer before sending the next, and time every call with ``perf_counter``.
"""

from __future__ import annotations

import asyncio
import resource
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class Measurement:
    """What one run of one system produced.

    ``outputs`` is ``None`` where the run did not answer every input once (the ceiling's
    timed passes); ``latencies_s`` is ``None`` where calls are not individually awaited.
    """

    items: int
    elapsed_s: float
    outputs: list[Any] | None
    latencies_s: list[float] | None
    mean_batch_size: float | None = None
    loop_lag_p99_ms: float | None = None
    batch_size: int | None = None
    worker_peak_rss_bytes: int = 0

    def summary(self) -> dict[str, Any]:
        """The JSON-ready figures (no per-item data)."""
        p50 = p99 = None
        if self.latencies_s:
            p50, p99 = (float(v) * 1e3 for v in np.percentile(self.latencies_s, [50, 99]))
        return {
            "items": self.items,
            "elapsed_s": self.elapsed_s,
            "items_per_s": self.items / self.elapsed_s,
            "p50_ms": p50,
            "p99_ms": p99,
            "mean_batch_size": self.mean_batch_size,
            "loop_lag_p99_ms": self.loop_lag_p99_ms,
            "batch_size": self.batch_size,
        }


async def closed_loop(
    call: Callable[[Any], Awaitable[Any]], inputs: Sequence[Any], callers: int
) -> tuple[list[Any], list[float], float]:
    """Runs every input through ``call`` from ``callers`` closed-loop coroutines.

    Caller ``i`` takes inputs ``i, i + callers, ...``. Returns the outputs (in input order),
    the per-call latencies in seconds, and the wall time of the whole run.
    """
    count = len(inputs)
    outputs: list[Any] = [None] * count
    latencies = [0.0] * count

    async def caller(first: int) -> None:
        clock = time.perf_counter
        for index in range(first, count, callers):
            item = inputs[index]
            sent = clock()
            outputs[index] = await call(item)
            latencies[index] = clock() - sent

    start = time.perf_counter()
    async with asyncio.TaskGroup() as group:
        for first in range(min(callers, count)):
            group.create_task(caller(first))
    return outputs, latencies, time.perf_counter() - start


def own_peak_rss_bytes() -> int:
    """This process's peak resident set size."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB elsewhere


def children_peak_rss_bytes() -> int:
    """The sum of the peak RSS of this process's live child processes.

    Call it before shutting a process pool down. ``RUSAGE_CHILDREN`` would only report the
    largest child that has exited, not the pool's total. Pages a child shares with its
    parent after ``fork`` count in both, so this errs high.
    """
    import psutil

    total = 0
    for child in psutil.Process().children(recursive=True):
        try:
            total += _peak_rss_of(child.pid) or child.memory_info().rss
        except psutil.Error:
            continue  # exited meanwhile
    return total


def _peak_rss_of(pid: int) -> int | None:
    # Linux keeps a process's peak RSS as VmHWM; elsewhere only the current RSS is at hand.
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return None
