"""W2's model as a job sees it: one item is a row's 64 pixel values (0 to 16) as a list.

It is W2's classifier (an MLP trained on the bundled digits, inputs scaled by 1/16, seed 0),
loaded from the benchmark's cache in ``setup()``; ``predict`` turns a batch of lists into
one array, as any model fed from JSON must.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

import asyncml


class DigitsRows(asyncml.Model[list[int], int]):
    """W2's MLP over rows of pixel values; outputs the class label."""

    max_batch_size = 256

    def __init__(self, cache_dir: str):
        self.cache_dir = cache_dir
        self.classifier: Any = None

    def setup(self) -> None:
        from workloads import _trained_digits

        self.classifier = _trained_digits(Path(self.cache_dir))[0]

    def predict(self, batch: list[list[int]]) -> Any:
        return self.classifier.predict(np.asarray(batch, dtype=np.float64) / 16.0)
