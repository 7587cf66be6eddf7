"""Classify handwritten digits on two Ray actors, with the same model code as on threads.

Sixty-four concurrent clients each send one digit per ``await model(row)`` call. asyncml
batches their calls in this process and sends each batch, as one actor call, to whichever
of the two actors is free; the rows travel through Ray's object store. On a cluster, give
``ray.init`` its address (or pass ``address=`` to ``RayExecutor``): nothing else changes.

Run:  python examples/ray_digits.py
"""

from __future__ import annotations

import asyncio
import logging
import os
import time

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier

import asyncml
from asyncml.executors import RayExecutor


class DigitClassifier(asyncml.Model[np.ndarray, np.int64]):
    """Wraps a fitted estimator; each actor gets its own copy of it."""

    max_batch_size = 128
    collate = "stack"  # predict() receives one (batch, 64) array

    def __init__(self, estimator: MLPClassifier) -> None:
        self.estimator = estimator

    def predict(self, rows: np.ndarray) -> np.ndarray:
        return self.estimator.predict(rows)  # type: ignore[no-any-return]


def train() -> tuple[MLPClassifier, np.ndarray, np.ndarray]:
    """Fits a small MLP on the digits bundled with scikit-learn; returns it and test data."""
    features, labels = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        features / 16.0, labels, test_size=0.5, random_state=0
    )
    estimator = MLPClassifier(hidden_layer_sizes=(64,), max_iter=1000, random_state=0)
    estimator.fit(x_train, y_train)
    return estimator, x_test, y_test


async def client(model: asyncml.LoadedModel[np.ndarray, np.int64], rows: np.ndarray) -> list[int]:
    """One of many concurrent clients, each classifying its rows one call at a time."""
    return [int(await model(row)) for row in rows]


async def main(clients: int = 64, rounds: int = 5) -> None:
    estimator, rows, labels = train()
    requests = np.concatenate([rows] * rounds)  # ~4,500 single-row calls
    expected = np.concatenate([labels] * rounds)
    shares = np.array_split(np.arange(len(requests)), clients)

    pool = RayExecutor(2)  # two actors, one CPU each
    async with asyncml.load(DigitClassifier(estimator), executor=pool) as model:
        started = time.perf_counter()
        answers = await asyncio.gather(*(client(model, requests[share]) for share in shares))
        elapsed = time.perf_counter() - started
        stats = model.statistics()

    predictions = np.concatenate([np.asarray(a, dtype=np.int64) for a in answers])
    accuracy = float(np.mean(predictions == expected[np.concatenate(shares)]))
    print(
        f"{clients} clients classified {len(requests):,} digits on 2 Ray actors in "
        f"{elapsed:.2f} s ({len(requests) / elapsed:,.0f} per second), accuracy {accuracy:.1%}"
    )
    print(f"{stats.batches:,} batches of {stats.mean_batch_size:.0f} rows on average")
    for actor, batches in sorted(pool.served.items()):
        print(f"actor {actor} served {batches:,} batches")


if __name__ == "__main__":
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # A local Ray for the example; asyncml would start one by itself, but quieter this way.
    # Ray started here is shut down here: asyncml shuts down only a Ray it started.
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.ERROR)
    try:
        asyncio.run(main())
    finally:
        ray.shutdown()
