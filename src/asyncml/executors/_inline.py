"""Inline workers: ``async def predict`` runs on the event loop, for models that await.

Suited to models whose predict is a call to a remote service: the loop waits on I/O, it never
computes. Each worker is a model instance running one batch at a time as a task owned by
the executor's task group.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import Callable, Sequence
from typing import Any

from .._batch import BatchOutcome, arun_batch
from .._errors import AsyncmlError, Closed, ModelError, SetupError
from .._model import Model, ModelSpec
from ._base import BatchDone, Executor, close_failed


class InlineExecutor(Executor):
    """Runs an ``async def predict`` model on the event loop, up to ``workers`` batches at once.

    Synchronous ``setup()``, ``warmup()`` and ``close()`` run in a thread, so that loading
    weights or opening files never blocks the loop.
    """

    def __init__(self, workers: int = 1):
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be an int >= 1, got {workers!r}")
        self._workers = workers
        self._idle: list[Model[Any, Any]] = []
        self._models: list[Model[Any, Any]] = []
        self._group: asyncio.TaskGroup | None = None
        self._running: set[asyncio.Task[None]] = set()
        self._spec: ModelSpec | None = None

    @property
    def capacity(self) -> int:
        return self._workers

    def check(self, spec: ModelSpec) -> None:
        if not spec.is_async:
            raise TypeError(
                f"model {spec.name!r} has a synchronous predict(); executor='inline' runs on "
                "the event loop, which must never run model code: use executor='thread'"
            )

    async def start(self, spec: ModelSpec) -> None:
        self._spec = spec
        for index in range(self._workers):
            model = spec.create()
            try:
                await _call(model.setup)
                self._models.append(model)  # close() releases what setup() acquired
                await _call(model.warmup)
            except BaseException as exc:
                with contextlib.suppress(AsyncmlError):
                    await self._close_models()  # the workers that did start
                if not isinstance(exc, Exception):
                    raise  # a cancellation, not a failure of the model
                raise SetupError(
                    f"model {spec.name!r} failed to start in inline worker {index}: "
                    f"{type(exc).__name__}: {exc}",
                    model=spec.name,
                    worker=index,
                ) from exc
        self._idle = list(self._models)
        self._group = asyncio.TaskGroup()
        await self._group.__aenter__()

    def submit(self, items: Sequence[Any], done: BatchDone) -> None:
        assert self._group is not None, "submit() before start()"
        task = self._group.create_task(self._run(self._idle.pop(), items, done))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _run(self, model: Model[Any, Any], items: Sequence[Any], done: BatchDone) -> None:
        spec = self._spec
        assert spec is not None
        try:
            outcome = await arun_batch(model, spec, items)
        except asyncio.CancelledError:
            closed = Closed(f"model {spec.name!r} was closed while the item ran", model=spec.name)
            done(BatchOutcome.failure(len(items), closed))
            raise
        except BaseException as exc:
            done(BatchOutcome.failure(len(items), ModelError.from_exception(exc, model=spec.name)))
        else:
            done(outcome)
        finally:
            self._idle.append(model)

    async def aclose(self, *, graceful: bool) -> None:
        if self._group is not None:
            if not graceful:
                for task in self._running:
                    task.cancel()
            group, self._group = self._group, None
            await group.__aexit__(None, None, None)
        await self._close_models()

    async def _close_models(self) -> None:
        errors: list[BaseException] = []
        for model in self._models:
            try:
                await _call(model.close)
            except Exception as exc:
                errors.append(exc)
        self._models = []
        if errors:
            raise close_failed(self._spec.name if self._spec else "?", errors[0])


async def _call(method: Callable[[], Any]) -> None:
    if inspect.iscoroutinefunction(method):
        await method()
    else:
        await asyncio.to_thread(method)
