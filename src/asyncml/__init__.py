"""asyncml: use machine-learning models concurrently without blocking the event loop.

::

    async with asyncml.load(model, workers=2) as m:
        y = await m(x)                      # batched with concurrent calls
        ys = await m.map(xs)                # many, in input order
"""

from ._errors import (
    AsyncmlError,
    Closed,
    ItemTimeout,
    ModelError,
    OutputMismatch,
    Overloaded,
    SetupError,
    WorkerCrashed,
)
from ._loaded import LoadedModel, load
from ._looplag import LoopLagMonitor, LoopLagStatistics
from ._map import MapRun, map
from ._model import Model
from ._stats import LatencySummary, ModelStatistics
from .executors._shared import shared_array
from .pipeline import DeadLetter, Pipeline, PipelineFailed, RateLimit, Retry, fetch, stage

__all__ = [
    "AsyncmlError",
    "Closed",
    "DeadLetter",
    "ItemTimeout",
    "LatencySummary",
    "LoadedModel",
    "LoopLagMonitor",
    "LoopLagStatistics",
    "MapRun",
    "Model",
    "ModelError",
    "ModelStatistics",
    "OutputMismatch",
    "Overloaded",
    "Pipeline",
    "PipelineFailed",
    "RateLimit",
    "Retry",
    "SetupError",
    "WorkerCrashed",
    "fetch",
    "load",
    "map",
    "shared_array",
    "stage",
]
