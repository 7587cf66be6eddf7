"""Classify handwritten digits concurrently with a scikit-learn model.

Sixty-four concurrent clients each send one digit per ``await model(row)`` call, as web
handlers or crawlers would; asyncml batches their calls, runs the batches on two worker
threads, and never blocks the event loop.

Run:  python examples/classify_digits.py
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier

import asyncml


class DigitClassifier(asyncml.Model[np.ndarray, np.int64]):
    """Wraps a fitted estimator; each worker gets its own copy of it."""

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


async def main(clients: int = 64, rounds: int = 20) -> None:
    estimator, rows, labels = train()
    requests = np.concatenate([rows] * rounds)  # ~18,000 single-row calls
    expected = np.concatenate([labels] * rounds)
    shares = np.array_split(np.arange(len(requests)), clients)

    async with (
        asyncml.LoopLagMonitor(interval=0.005) as lag,
        asyncml.load(DigitClassifier(estimator), workers=2) as model,
    ):
        started = time.perf_counter()
        answers = await asyncio.gather(*(client(model, requests[share]) for share in shares))
        elapsed = time.perf_counter() - started
        stats = model.statistics()

    predictions = np.concatenate([np.asarray(a, dtype=np.int64) for a in answers])
    accuracy = float(np.mean(predictions == expected[np.concatenate(shares)]))
    print(
        f"{clients} clients classified {len(requests):,} digits in {elapsed:.2f} s "
        f"({len(requests) / elapsed:,.0f} per second), accuracy {accuracy:.1%}"
    )
    print(
        f"{stats.batches:,} batches of {stats.mean_batch_size:.0f} rows on average; "
        f"latency p50 {stats.latency.p50_ms:.2f} ms, p99 {stats.latency.p99_ms:.2f} ms; "
        f"event-loop lag p99 {lag.statistics().lag.p99_ms:.2f} ms"
    )


if __name__ == "__main__":
    asyncio.run(main())
