"""The scikit-learn digits classifier as an asyncml model, for ``asyncml run``.

::

    asyncml run examples/digits/model.py:DigitsClassifier --field pixels \\
        --input examples/digits/digits.jsonl --output predictions.jsonl

Each item is one 8x8 image as 64 pixel values from 0 to 16; each output is its digit.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

import asyncml

#: The classifier learns from the first digits of scikit-learn's set; the rest are new to it.
TRAINING_DIGITS = 1000


class DigitsClassifier(asyncml.Model[list[int], int]):
    """A small MLP trained in ``setup()``: about a second, once per worker."""

    max_batch_size = 256

    def setup(self) -> None:
        from sklearn.datasets import load_digits
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.neural_network import MLPClassifier

        pixels, digits = load_digits(return_X_y=True)
        self.classifier = MLPClassifier(hidden_layer_sizes=(64,), random_state=0, max_iter=200)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            self.classifier.fit(pixels[:TRAINING_DIGITS] / 16.0, digits[:TRAINING_DIGITS])

    def predict(self, batch: list[list[int]]) -> Any:
        return self.classifier.predict(np.asarray(batch, dtype=np.float64) / 16.0)
