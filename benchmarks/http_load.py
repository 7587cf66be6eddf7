"""The HTTP load generator: a separate process with a lean keep-alive client (on uvloop).

::

    python benchmarks/http_load.py URL WORKLOAD CACHE_DIR closed CONNECTIONS SECONDS
    python benchmarks/http_load.py URL WORKLOAD CACHE_DIR poisson RATE SECONDS
    python benchmarks/http_load.py - WORKLOAD CACHE_DIR inprocess CALLERS SECONDS

Prints one JSON object: requests answered, items/s, latency p50/p99 (ms), status counts
and how many answers were wrong.

- closed: CONNECTIONS callers each send a request, await its answer and send the next,
  for SECONDS (after one warm-up request each).
- poisson: requests arrive at exponential intervals (seed 0) at RATE per second for
  SECONDS, whatever the server's pace; each latency runs from the request's scheduled
  arrival, so time spent waiting for a free connection counts (no coordinated omission).
- inprocess: no HTTP. The model the asyncml server serves (same options) runs in this
  process, and CALLERS closed-loop coroutines ``await model(item)`` for SECONDS: what the
  server's HTTP layer costs is the difference.

Expected outputs are computed once per cache folder and kept there.
"""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import sys
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import uvloop
from http_client import Client, RequestFailed
from workloads import build_model, make_inputs, same_output

#: Distinct request bodies cycled through (encoded before timing starts).
DISTINCT_INPUTS = 2_000
#: Connections available to open-loop arrivals: more than any queue a server keeps.
POISSON_CONNECTIONS = 4_096
#: Seconds a request may take before it counts as failed.
REQUEST_TIMEOUT_S = 30.0


class Load:
    """Request bodies and the expected answers of one workload."""

    def __init__(self, workload: str, cache: Path):
        inputs = make_inputs(workload, DISTINCT_INPUTS, cache)
        self.inputs = inputs
        self.expected = _expected(workload, inputs, cache)
        #: The expected outputs as JSON decodes them: most answers match one exactly, and
        #: comparing with it costs far less than numpy's tolerance check.
        self.decoded = [
            orjson.loads(orjson.dumps(y, option=orjson.OPT_SERIALIZE_NUMPY)) for y in self.expected
        ]
        self.bodies = [
            orjson.dumps({"input": x}, option=orjson.OPT_SERIALIZE_NUMPY) for x in inputs
        ]
        self.messages: list[bytes] = []
        self.latencies: list[float] = []
        self.statuses: Counter[int] = Counter()
        self.wrong = 0

    def connect(self, url: str, connections: int) -> Client:
        """A client for ``url``, and every request encoded for it."""
        client = Client(url, connections)
        self.messages = [client.post_message(body) for body in self.bodies]
        return client

    async def send(self, http: Client, index: int, since: float) -> None:
        slot = index % len(self.messages)
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                status, body = await http.send(self.messages[slot])
        except (RequestFailed, OSError, TimeoutError):
            self.statuses[0] += 1
            return
        self.statuses[status] += 1
        if status == 200:
            self.latencies.append(time.perf_counter() - since)
            self.check(slot, orjson.loads(body)["output"])

    def reset(self) -> None:
        """Forgets what the warm-up recorded."""
        self.latencies.clear()
        self.statuses.clear()
        self.wrong = 0

    def check(self, slot: int, output: Any) -> None:
        exact = not isinstance(output, np.ndarray) and output == self.decoded[slot]
        if not exact and not same_output(np.asarray(output), self.expected[slot]):
            self.wrong += 1


def _expected(workload: str, inputs: list[Any], cache: Path) -> list[Any]:
    """The model's own outputs for ``inputs``, computed once per cache folder."""
    path = cache / f"expected-{workload}-{len(inputs)}.pkl"
    if path.exists():
        expected: list[Any] = pickle.loads(path.read_bytes())
        return expected
    predict = build_model(workload, cache)
    expected = [y for i in range(0, len(inputs), 32) for y in predict(inputs[i : i + 32])]
    partial = path.with_suffix(f".{os.getpid()}")
    partial.write_bytes(pickle.dumps(expected))
    partial.replace(path)  # atomic: concurrent runs never read half a file
    return expected


Call = Callable[[int, float], Coroutine[Any, Any, None]]


async def closed_loop(load: Load, call: Call, callers: int, seconds: float) -> float:
    """``callers`` coroutines each doing ``await call(index, sent_at)`` one after another
    for ``seconds``, after a warm-up call each; returns the seconds they took."""
    async with asyncio.TaskGroup() as group:  # warm-up: one call per caller
        for i in range(callers):
            group.create_task(call(i, time.perf_counter()))
    load.reset()
    start = time.perf_counter()
    end = start + seconds

    async def caller(first: int) -> None:
        index = first
        while (now := time.perf_counter()) < end:
            await call(index, now)
            index += callers

    async with asyncio.TaskGroup() as group:
        for first in range(callers):
            group.create_task(caller(first))
    return time.perf_counter() - start


async def closed(load: Load, url: str, connections: int, seconds: float) -> float:
    http = load.connect(url, connections)
    try:
        return await closed_loop(load, partial(load.send, http), connections, seconds)
    finally:
        http.close()


async def poisson(load: Load, url: str, rate: float, seconds: float) -> float:
    gaps = np.random.default_rng(0).exponential(1 / rate, size=int(rate * seconds) + 1)
    arrivals = np.cumsum(gaps)
    arrivals = arrivals[arrivals < seconds]
    http = load.connect(url, POISSON_CONNECTIONS)
    try:
        async with asyncio.TaskGroup() as group:  # warm-up
            for i in range(64):
                group.create_task(load.send(http, i, time.perf_counter()))
        load.reset()
        start = time.perf_counter()
        async with asyncio.TaskGroup() as group:
            for index, at in enumerate(arrivals.tolist()):
                delay = start + at - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                group.create_task(load.send(http, index, start + at))
        return time.perf_counter() - start
    finally:
        http.close()


async def inprocess(load: Load, workload: str, cache: Path, callers: int, seconds: float) -> float:
    from http_servers import asyncml_model

    from asyncml.job import fewer_collections

    async with asyncml_model(workload, cache) as model:

        async def call(index: int, since: float) -> None:
            slot = index % len(load.inputs)
            output = await model(load.inputs[slot])
            load.latencies.append(time.perf_counter() - since)
            load.statuses[200] += 1
            load.check(slot, output)

        # The collector setting of the server it is compared with (see http_servers.py).
        with fewer_collections(freeze=True):
            return await closed_loop(load, call, callers, seconds)


def main() -> None:
    url, workload, cache, mode, level, seconds = sys.argv[1:7]
    load = Load(workload, Path(cache))
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        if mode == "closed":
            elapsed = runner.run(closed(load, url, int(level), float(seconds)))
        elif mode == "inprocess":
            elapsed = runner.run(inprocess(load, workload, Path(cache), int(level), float(seconds)))
        else:
            elapsed = runner.run(poisson(load, url, float(level), float(seconds)))
    answered = len(load.latencies)
    p50 = p99 = None
    if answered:
        p50, p99 = (float(v) * 1e3 for v in np.percentile(load.latencies, [50, 99]))
    result: dict[str, Any] = {
        "answered": answered,
        "elapsed_s": elapsed,
        "items_per_s": answered / elapsed,
        "p50_ms": p50,
        "p99_ms": p99,
        "statuses": {str(k): v for k, v in sorted(load.statuses.items())},
        "wrong": load.wrong,
    }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
