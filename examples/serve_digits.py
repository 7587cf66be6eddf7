"""Serve a digits classifier over HTTP, call it the way clients do, then shut down.

Trains a small scikit-learn MLP on the digits bundled with scikit-learn, serves it with
asyncml's HTTP server on a free port of 127.0.0.1 (in this process), and sends it requests:
one digit, a list of digits, an Open Inference Protocol (v2) tensor, and then 64 concurrent
clients sending one digit per request, which the server batches. Ends by reading the
server's Prometheus metrics and stopping it gracefully.

Run it with ``python examples/serve_digits.py``; ``asyncml serve file.py:model`` does the
same from the command line.
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

CLIENTS = 64
REQUESTS = 2_000


class Digits(asyncml.Model[list[float], int]):
    """An 8x8 digit (64 floats in 0..1) in, its class out."""

    name = "digits"
    max_batch_size = 64

    def __init__(self, classifier: MLPClassifier):
        self.classifier = classifier

    def predict(self, rows: list[list[float]]) -> list[int]:
        labels: list[int] = self.classifier.predict(np.asarray(rows)).tolist()
        return labels


def train() -> tuple[MLPClassifier, np.ndarray, np.ndarray]:
    features, labels = load_digits(return_X_y=True)
    features = features / 16.0
    classifier = MLPClassifier(hidden_layer_sizes=(64,), max_iter=100, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        classifier.fit(features[:1000], labels[:1000])
    return classifier, features[1000:], labels[1000:]


async def post(http: aiohttp.ClientSession, path: str, body: Any) -> tuple[int, Any]:
    async with http.post(path, json=body) as response:
        return response.status, await response.json()


async def main() -> None:
    classifier, features, labels = train()
    app = asyncml.server.create_app([asyncml.load(Digits(classifier), max_queue=512)])
    async with (
        asyncml.server.serving(app, port=0) as server,
        aiohttp.ClientSession(server.url) as http,
    ):
        await app.wait_ready()
        print(f"serving 'digits' at {server.url}")
        predict = "/v1/models/digits/predict"

        status, answer = await post(http, predict, {"input": features[0].tolist()})
        print(f"one digit: HTTP {status}, predicted {answer['output']}, true {labels[0]}")
        status, answer = await post(http, predict, {"inputs": features[1:6].tolist()})
        print(f"five digits: predicted {answer['outputs']}, true {labels[1:6].tolist()}")

        tensor = {"name": "pixels", "shape": [3, 64], "datatype": "FP32"}
        body = {"inputs": [{**tensor, "data": features[6:9].ravel().tolist()}]}
        status, answer = await post(http, "/v2/models/digits/infer", body)
        (output,) = answer["outputs"]
        print(f"v2 infer: {output['datatype']} tensor of shape {output['shape']}: {output['data']}")

        status, answer = await post(http, predict, {"input": "not a digit"})
        print(f"a bad input fails alone: HTTP {status}: {answer['error'][:60]}...")

        statuses: list[int] = []
        correct = 0

        async def client(first: int) -> None:
            nonlocal correct
            for request in range(first, REQUESTS, CLIENTS):
                index = request % len(features)
                status, answer = await post(http, predict, {"input": features[index].tolist()})
                statuses.append(status)
                correct += status == 200 and answer["output"] == labels[index]

        started = time.perf_counter()
        async with asyncio.TaskGroup() as group:
            for first in range(CLIENTS):
                group.create_task(client(first))
        elapsed = time.perf_counter() - started
        ok = statuses.count(200)
        print(
            f"{CLIENTS} clients sent {REQUESTS:,} requests: {ok:,} answered, "
            f"accuracy {correct / REQUESTS:.1%}, {REQUESTS / elapsed:,.0f} requests/s"
        )

        async with http.get("/metrics") as response:
            metrics = await response.text()
        wanted = ("asyncml_http_requests_total{", "asyncml_model_batch_size_count{")
        for line in metrics.splitlines():
            if line.startswith(wanted):
                print("metrics:", line)
    print("stopped cleanly")


if __name__ == "__main__":
    asyncio.run(main())
