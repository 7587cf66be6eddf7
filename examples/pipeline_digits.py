"""Fetch, preprocess, classify and post-process digits with a pipeline.

A small aiohttp server on 127.0.0.1 stands in for a remote store: it answers each digit's
pixels after 20 ms, and fails a few requests with 500 or 429 the first time. The pipeline
fetches 200 at once on the event loop (retrying those failures), scales the pixels on a
thread, classifies them in batches on two worker processes, and names the labels inline.

Run:  python examples/pipeline_digits.py
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
from aiohttp import web
from sklearn.datasets import load_digits
from sklearn.neural_network import MLPClassifier

import asyncml
from asyncml.pipeline import Pipeline, fetch, stage

TRAINED = 1000
NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


class DigitClassifier(asyncml.Model[np.ndarray, np.int64]):
    """Trains in each worker's setup() on the first 1,000 digits (it takes a second)."""

    max_batch_size = 128
    collate = "stack"

    def setup(self) -> None:
        features, labels = load_digits(return_X_y=True)
        self.estimator = MLPClassifier(hidden_layer_sizes=(64,), max_iter=1000, random_state=0)
        self.estimator.fit(features[:TRAINED] / 16.0, labels[:TRAINED])

    def predict(self, rows: np.ndarray) -> np.ndarray:
        return self.estimator.predict(rows)  # type: ignore[no-any-return]


def preprocess(answer: dict[str, Any]) -> np.ndarray:
    return np.asarray(answer["pixels"], dtype=np.float64) / 16.0


def name(label: np.int64) -> str:
    return NAMES[int(label)]


async def start_store(images: np.ndarray) -> tuple[web.AppRunner, str]:
    """The stand-in remote store: ``GET /digit/{i}`` after 20 ms, a few failing once."""
    failed: set[int] = set()

    async def digit(request: web.Request) -> web.Response:
        i = int(request.match_info["i"])
        await asyncio.sleep(0.02)
        if i % 97 == 0 and i not in failed:
            failed.add(i)
            if i % 2:
                return web.Response(status=429, headers={"Retry-After": "0.05"})
            return web.Response(status=500)
        return web.json_response({"pixels": images[i].tolist()})

    app = web.Application()
    app.router.add_get("/digit/{i}", digit)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


async def main() -> None:
    images, labels = load_digits(return_X_y=True)
    store, base = await start_store(images)
    try:
        pipeline = Pipeline(
            fetch(lambda i: f"{base}/digit/{i}", read="json", concurrency=200),
            stage(preprocess, executor="thread"),
            stage(DigitClassifier, executor="process", workers=2),
            stage(name, executor="inline"),
        )
        indices = range(TRAINED, len(images))  # the digits the model has not seen
        async with pipeline.stream(indices, with_index=True) as outputs:
            named = {TRAINED + position: label async for position, label in outputs}
        summary = outputs.summary()
    finally:
        await store.cleanup()
    correct = sum(named[i] == NAMES[labels[i]] for i in named)
    print(f"{summary}; held-out accuracy {correct / len(named):.1%}")
    for stats in summary.stages:
        print(f"  {stats.name:<16} {stats.done:,} done, {stats.retries} retries")


if __name__ == "__main__":
    asyncio.run(main())
