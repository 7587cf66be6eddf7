"""Where model code runs: the executor interface, the built-in executors, and what a new
executor needs to run a model's batches (its spec, and the batch runners that isolate
failing items)."""

from .._batch import BatchOutcome, arun_batch, run_batch
from .._model import ModelSpec
from ._base import BatchDone, Executor
from ._inline import InlineExecutor
from ._process import ProcessExecutor
from ._ray import RayExecutor
from ._thread import ThreadExecutor

__all__ = [
    "BatchDone",
    "BatchOutcome",
    "Executor",
    "InlineExecutor",
    "ModelSpec",
    "ProcessExecutor",
    "RayExecutor",
    "ThreadExecutor",
    "arun_batch",
    "run_batch",
]
