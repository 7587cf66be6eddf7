"""What each Ray actor runs: one model instance, one batch per call.

This module is imported in the actor's process (Ray pickles the class by reference), so it
imports nothing from Ray at module level and nothing heavy: the model's own imports happen
in its ``setup()``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from .._batch import BatchOutcome, run_batch
from .._errors import ModelError
from .._model import Model, ModelSpec
from .._threads import IntraOpLimit
from ._wire import pack_outcome, unpack


@dataclass(frozen=True, slots=True)
class ActorInfo:
    """Where one actor runs: its process id and its node."""

    pid: int
    node_id: str
    node_ip: str

    def label(self) -> str:
        return f"{self.node_ip}:{self.pid}"


class ModelActor:
    """One worker: builds the model in :meth:`start` (not in ``__init__``, so that a failing
    ``setup()`` is an answer, not a dead actor), runs batches, and closes the model."""

    def __init__(self, spec: ModelSpec, threads: int | None) -> None:
        self._spec = spec
        self._limit = IntraOpLimit(threads)
        self._model: Model[Any, Any] | None = None

    def start(self) -> tuple[ActorInfo | None, ModelError | None]:
        """Runs ``setup()`` and ``warmup()``; returns where the actor runs, or the error."""
        import ray

        spec = self._spec
        model = None
        try:
            model = spec.create()
            model.setup()
            self._model = model
            self._limit.apply()  # the whole process is this actor's: never released
            model.warmup()
        except BaseException as exc:
            error = ModelError.from_exception(exc, model=spec.name)
            if self._model is not None:
                self._close()  # releases what setup() acquired
            return None, error
        node_id = ray.get_runtime_context().get_node_id()
        node_ip = ray.util.get_node_ip_address()  # type: ignore[no-untyped-call]
        return ActorInfo(os.getpid(), node_id, node_ip), None

    def run(self, payload: Any) -> BatchOutcome:
        """Runs one batch (as ``_wire.pack`` sent it); the outcome goes back packed."""
        model, spec = self._model, self._spec
        assert model is not None, "start() must succeed before run()"
        items = unpack(payload)
        try:
            outcome = run_batch(model, spec, items)
        except BaseException as exc:  # e.g. SystemExit raised by the model's code
            outcome = BatchOutcome.failure(
                len(items), ModelError.from_exception(exc, model=spec.name)
            )
        self._limit.cover_new_libraries()
        return pack_outcome(outcome)

    def close(self) -> ModelError | None:
        """Runs the model's ``close()``; returns what it raised."""
        return self._close()

    def _close(self) -> ModelError | None:
        model, self._model = self._model, None
        if model is None:
            return None
        try:
            model.close()
        except BaseException as exc:
            return ModelError.from_exception(exc, model=self._spec.name)
        return None
