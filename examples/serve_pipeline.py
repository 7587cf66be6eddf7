"""Serve a pipeline over HTTP: check, scale, classify and name digits, one request at a time.

Each request's items go through every stage: an async check on the event loop, scaling on
a thread, a scikit-learn MLP in batches (concurrent requests share them), and naming the
label inline. The program serves the pipeline on a free port of 127.0.0.1 (in this
process), sends one digit, a list, a bad input (its error names the stage that failed),
then 64 concurrent clients, and ends by reading the per-stage metrics and stopping
gracefully.

Run it with ``python examples/serve_pipeline.py``; from the command line,
``asyncml serve examples/serve_pipeline.py:digits`` serves the same pipeline as "digits".
"""

from __future__ import annotations

import asyncio
import time
import warnings
from typing import Any

import aiohttp
import numpy as np
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier

import asyncml
import asyncml.server
from asyncml import Pipeline, stage

TRAINED = 1000
NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
CLIENTS = 64
REQUESTS = 2_000


async def check(pixels: Any) -> list[float]:
    """A request's item: 64 pixel values from 0 to 16 (async: it could look things up)."""
    if not isinstance(pixels, list) or len(pixels) != 64:
        raise ValueError("expected a list of 64 pixel values")
    return pixels


def scale(pixels: list[float]) -> np.ndarray:
    return np.asarray(pixels, dtype=np.float64) / 16.0


class DigitClassifier(asyncml.Model[np.ndarray, np.int64]):
    """Trains in its worker's setup() on the first 1,000 digits (about a second)."""

    max_batch_size = 64
    collate = "stack"

    def setup(self) -> None:
        features, labels = load_digits(return_X_y=True)
        self.estimator = MLPClassifier(hidden_layer_sizes=(64,), max_iter=200, random_state=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            self.estimator.fit(features[:TRAINED] / 16.0, labels[:TRAINED])

    def predict(self, rows: np.ndarray) -> np.ndarray:
        return self.estimator.predict(rows)  # type: ignore[no-any-return]


def name(label: np.int64) -> str:
    return NAMES[int(label)]


digits = Pipeline(
    stage(check),
    stage(scale, executor="thread"),
    stage(DigitClassifier),
    stage(name, executor="inline"),
)


async def post(http: aiohttp.ClientSession, path: str, body: Any) -> tuple[int, Any]:
    async with http.post(path, json=body) as response:
        return response.status, await response.json()


async def main() -> None:
    features, labels = load_digits(return_X_y=True)
    held_out = features[TRAINED:].tolist()
    truth = [NAMES[label] for label in labels[TRAINED:]]
    app = asyncml.server.create_app({"digits": digits.open(max_queue=512, name="digits")})
    async with (
        asyncml.server.serving(app, port=0) as server,
        aiohttp.ClientSession(server.url) as http,
    ):
        await app.wait_ready()  # every stage's workers are set up
        print(f"serving pipeline 'digits' at {server.url}")
        predict = "/v1/models/digits/predict"

        status, answer = await post(http, predict, {"input": held_out[0]})
        print(f"one digit: HTTP {status}, {answer['output']!r} (true: {truth[0]!r})")
        status, answer = await post(http, predict, {"inputs": held_out[1:5]})
        print(f"four digits: {answer['outputs']} (true: {truth[1:5]})")
        status, answer = await post(http, predict, {"input": "not a digit"})
        print(f"a bad input fails at stage {answer['stage']!r}: HTTP {status}: {answer['error']}")

        statuses: list[int] = []
        correct = 0

        async def client(first: int) -> None:
            nonlocal correct
            for request in range(first, REQUESTS, CLIENTS):
                index = request % len(held_out)
                status, answer = await post(http, predict, {"input": held_out[index]})
                statuses.append(status)
                correct += status == 200 and answer["output"] == truth[index]

        started = time.perf_counter()
        async with asyncio.TaskGroup() as group:
            for first in range(CLIENTS):
                group.create_task(client(first))
        elapsed = time.perf_counter() - started
        print(
            f"{CLIENTS} clients sent {REQUESTS:,} requests: {statuses.count(200):,} answered, "
            f"accuracy {correct / REQUESTS:.1%}, {REQUESTS / elapsed:,.0f} requests/s"
        )

        async with http.get("/metrics") as response:
            metrics = await response.text()
        for line in metrics.splitlines():
            if line.startswith("asyncml_pipeline_stage_items_total{") and 'outcome="ok"' in line:
                print("metrics:", line)
    print("stopped cleanly")


if __name__ == "__main__":
    asyncio.run(main())
