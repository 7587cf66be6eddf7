"""Pipeline benchmarks: W4 (fetch → preprocess → W2's model → postprocess) and the
overhead and memory of inline stages.

W4: a local aiohttp server in its own process answers ``GET /row/{i}`` with a digits row
after 20 ms. Each repeat runs, interleaved:

``fetch-only``  aiohttp alone: ``asyncio.gather`` over the items with a semaphore of
                ``concurrency`` and the same session settings, no compute. What the HTTP
                client can do on this machine: the practical ceiling.
``naive``       the recipe asyncml replaces: ``gather`` over the items, each fetching, then
                ``run_in_executor(None, preprocess)`` and ``run_in_executor(None, predict,
                [row])``, one model call per item.
``asyncml``     ``Pipeline(fetch(concurrency=200), stage(preprocess, executor="thread"),
                stage(W2 model), stage(postprocess, executor="inline"))``.

The nominal ceiling is min(concurrency / 20 ms, W2's ceiling).

Noop: ``Pipeline`` of three inline identity stages over ``range(N)`` in a fresh process:
microseconds per item per stage (against a plain loop calling the three functions), and the
growth of peak RSS over the run.

Run:  python benchmarks/pipeline.py [--quick] [--repeats 3] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from workloads import build_model, make_inputs

ROOT = Path(__file__).parents[1]

DELAY = 0.02


# -- the stand-in remote store ---------------------------------------------------------------


def serve_rows(count: int) -> None:
    """Runs the store until killed; prints its port first."""
    from aiohttp import web

    rows = [row.tolist() for row in make_inputs("W2", count)]
    bodies = [json.dumps({"row": row}).encode() for row in rows]

    async def row(request: web.Request) -> web.Response:
        await asyncio.sleep(DELAY)
        return web.Response(body=bodies[int(request.match_info["i"]) % count])

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/row/{i}", row)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=4096)
        await site.start()
        print(runner.addresses[0][1], flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


# -- W4 systems ------------------------------------------------------------------------------


def preprocess(body: dict[str, Any]) -> np.ndarray:
    return np.asarray(body["row"], dtype=np.float64)


def postprocess(label: Any) -> int:
    return int(label)


async def fetch_only(base: str, items: int, concurrency: int) -> float:
    import aiohttp

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        room = asyncio.Semaphore(concurrency)

        async def one(i: int) -> Any:
            async with room, session.get(f"{base}/row/{i}") as response:
                return await response.json(content_type=None)

        started = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(items)))
        return items / (time.perf_counter() - started)


async def naive(base: str, items: int, concurrency: int, predict: Any) -> float:
    import aiohttp

    loop = asyncio.get_running_loop()
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(i: int) -> int:
            async with session.get(f"{base}/row/{i}") as response:
                body = await response.json(content_type=None)
            row = await loop.run_in_executor(None, preprocess, body)
            labels = await loop.run_in_executor(None, predict, [row])
            return postprocess(labels[0])

        started = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(items)))
        return items / (time.perf_counter() - started)


async def pipelined(base: str, items: int, concurrency: int, predict: Any) -> float:
    from asyncml import Pipeline, fetch, stage

    pipeline = Pipeline(
        fetch(lambda i: f"{base}/row/{i}", read="json", concurrency=concurrency),
        stage(preprocess, executor="thread"),
        stage(predict, batched=True, batch_size=128, name="mlp"),
        stage(postprocess, executor="inline"),
    )
    summary = await pipeline.run(range(items), max_in_flight=4 * concurrency)
    assert summary.outputs == items, summary
    return summary.items_per_second


def w2_ceiling(predict: Any) -> float:
    rows = make_inputs("W2", 4096)
    best = 0.0
    for size in (32, 64, 128, 256):
        batches = [rows[i : i + size] for i in range(0, len(rows), size)]
        started = time.perf_counter()
        for batch in batches:
            predict(batch)
        best = max(best, len(rows) / (time.perf_counter() - started))
    return best


async def measure_w4(base: str, items: int, concurrency: int, repeats: int) -> dict[str, Any]:
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
    predict = build_model("W2")
    runs: dict[str, list[float]] = {"fetch-only": [], "naive": [], "asyncml": []}
    await fetch_only(base, min(items, 500), concurrency)  # warm the server and the client
    for repeat in range(repeats):
        for system, run in runs.items():
            if system == "fetch-only":
                rate = await fetch_only(base, items, concurrency)
            elif system == "naive":
                rate = await naive(base, items, concurrency, predict)
            else:
                rate = await pipelined(base, items, concurrency, predict)
            run.append(rate)
            print(f"  W4 repeat {repeat + 1}: {system} {rate:,.0f}/s", file=sys.stderr)
    nominal = min(concurrency / DELAY, w2_ceiling(predict))
    medians = {system: statistics.median(rates) for system, rates in runs.items()}
    ratios = [a / f for a, f in zip(runs["asyncml"], runs["fetch-only"], strict=True)]
    naive_ratios = [a / n for a, n in zip(runs["asyncml"], runs["naive"], strict=True)]
    return {
        "workload": "W4",
        "items": items,
        "concurrency": concurrency,
        "nominal_ceiling": nominal,
        "items_per_s": medians,
        "runs": runs,
        "asyncml_to_nominal_ceiling": medians["asyncml"] / nominal,
        "asyncml_to_fetch_only": statistics.median(ratios),
        "asyncml_to_naive": statistics.median(naive_ratios),
    }


# -- noop stages -----------------------------------------------------------------------------


def identity(x: Any) -> Any:
    return x


def noop_child(items: int) -> None:
    """In a fresh process: the pipeline's and a plain loop's time, and RSS growth."""
    import psutil

    from asyncml import Pipeline, stage

    def plain() -> float:
        started = time.perf_counter()
        for x in range(items):
            identity(identity(identity(x)))
        return time.perf_counter() - started

    async def piped() -> float:
        pipeline = Pipeline(*(stage(identity, executor="inline", name=f"s{i}") for i in range(3)))
        summary = await pipeline.run(range(items))
        assert summary.outputs == items
        return summary.elapsed

    asyncio.run(_warm())
    process = psutil.Process()
    before = process.memory_info().rss
    # ru_maxrss would include peaks from imports; sample the RSS during the run instead.
    peak = [before]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.005):
            peak[0] = max(peak[0], process.memory_info().rss)

    sampler = threading.Thread(target=sample, name="rss-sampler")
    sampler.start()
    try:
        pipeline_s = asyncio.run(piped())
    finally:
        stop.set()
        sampler.join()
    plain_s = plain()
    print(
        json.dumps(
            {
                "items": items,
                "pipeline_s": pipeline_s,
                "plain_s": plain_s,
                "rss_growth_mb": (peak[0] - before) / 2**20,
            }
        )
    )


async def _warm() -> None:
    from asyncml import Pipeline, stage

    await Pipeline(stage(identity, executor="inline")).run(range(10_000))


def measure_noop(items: int, repeats: int) -> dict[str, Any]:
    runs = []
    for repeat in range(repeats):
        done = subprocess.run(
            [sys.executable, __file__, "--noop-child", str(items)],
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
        )
        run = json.loads(done.stdout)
        run["us_per_item_per_stage"] = (run["pipeline_s"] - run["plain_s"]) / items / 3 * 1e6
        runs.append(run)
        print(
            f"  noop repeat {repeat + 1}: {run['us_per_item_per_stage']:.2f} us/item/stage, "
            f"peak RSS +{run['rss_growth_mb']:.1f} MB",
            file=sys.stderr,
        )
    return {
        "workload": "noop-3-inline-stages",
        "items": items,
        "us_per_item_per_stage": statistics.median(r["us_per_item_per_stage"] for r in runs),
        "rss_growth_mb": statistics.median(r["rss_growth_mb"] for r in runs),
        "runs": runs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer items, one repeat")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--items", type=int, default=None, help="W4 items (default 5,000)")
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--noop-items", type=int, default=None, help="default 10,000,000")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--serve", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--noop-child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        serve_rows(args.serve)
        return
    if args.noop_child is not None:
        noop_child(args.noop_child)
        return
    repeats = args.repeats or (1 if args.quick else 3)
    items = args.items or (1_000 if args.quick else 5_000)
    noop_items = args.noop_items or (200_000 if args.quick else 10_000_000)

    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", "4096"], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    try:
        assert server.stdout is not None
        base = f"http://127.0.0.1:{int(server.stdout.readline())}"
        w4 = asyncio.run(measure_w4(base, items, args.concurrency, repeats))
    finally:
        server.kill()
        server.wait()
    noop = measure_noop(noop_items, repeats)

    rates = w4["items_per_s"]
    print(f"W4 io-pipeline: {items:,} items, concurrency {args.concurrency}, {repeats} repeats")
    print(f"{'system':<12} {'items/s':>10} {'x nominal':>10} {'x fetch-only':>13}")
    for system, rate in rates.items():
        print(
            f"{system:<12} {rate:>10,.0f} {rate / w4['nominal_ceiling']:>10.2f} "
            f"{rate / rates['fetch-only']:>13.2f}"
        )
    print(
        f"nominal ceiling {w4['nominal_ceiling']:,.0f}/s; asyncml / fetch-only "
        f"{w4['asyncml_to_fetch_only']:.2f}, asyncml / naive {w4['asyncml_to_naive']:.2f} "
        "(medians of per-repeat ratios)"
    )
    print(
        f"noop, 3 inline stages, {noop_items:,} items: "
        f"{noop['us_per_item_per_stage']:.2f} us per item per stage, "
        f"peak RSS growth {noop['rss_growth_mb']:.1f} MB"
    )
    if args.json is not None:
        args.json.write_text(json.dumps([w4, noop], indent=2))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
