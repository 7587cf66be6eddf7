"""Fit a small grid of scikit-learn models on worker processes with asyncml.map.

The ``multiprocessing.Pool.map(train, configs)`` recipe, made safe: results stream back in
order as they finish, a worker that dies costs only a retry, and the configurations are
pulled from the generator only as fast as the workers take them.

Run:  python examples/parallel_map.py
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from typing import Any

import asyncml


def fit_and_score(params: dict[str, Any]) -> tuple[dict[str, Any], float]:
    """3-fold cross-validated accuracy of one configuration on the bundled digits."""
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score

    features, labels = load_digits(return_X_y=True)
    model = LogisticRegression(max_iter=500, **params)
    return params, float(cross_val_score(model, features / 16.0, labels, cv=3).mean())


def grid() -> Iterator[dict[str, Any]]:
    for c in (0.01, 0.1, 1.0, 10.0):
        yield {"C": c}


async def main() -> None:
    started = time.perf_counter()
    best: tuple[dict[str, Any], float] | None = None
    async for params, score in asyncml.map(fit_and_score, grid(), workers=os.cpu_count()):
        print(f"C={params['C']:<5} accuracy {score:.3f}")
        if best is None or score > best[1]:
            best = (params, score)
    assert best is not None
    print(f"best C={best[0]['C']} ({best[1]:.3f}) in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    asyncio.run(main())
