"""A stage: what runs on each item, where, how many at once, and what happens on failure."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

from .._loaded import ExecutorName, LoadedModel, load
from .._model import Model
from .._per_item import PerItem
from ..executors import Executor, ProcessExecutor
from ._rate import RateLimit
from ._retry import NO_RETRY, Retry

#: How a stage runs: ``"async"`` coroutines on the loop, one per item in flight;
#: ``"inline"`` a cheap sync function called on the loop, chunk by chunk; ``"pool"`` a
#: model or function on thread/process workers (or an async batch function) behind a batcher.
Kind = Literal["async", "inline", "pool"]


@dataclass(frozen=True)
class Stage:
    """One step of a :class:`~asyncml.pipeline.Pipeline`; build it with :func:`stage`."""

    fn: Any
    name: str
    kind: Kind
    executor: ExecutorName | Executor
    workers: int | None
    concurrency: int
    batched: bool
    batch_size: int
    max_wait: float | None
    flat: bool
    retry: Retry
    timeout: float | None
    rate: RateLimit | None
    queue: int

    def load(self) -> LoadedModel[Any, Any]:
        """The batcher and workers of a ``"pool"`` stage, for one run."""
        model = self.fn
        if not self.batched:
            model = PerItem(_Listed(model) if self.flat else model, self.name)
        executor, workers = self.executor, self.workers
        if executor == "process" and self.timeout is not None:
            # Items are queued before their batch starts, so once a batch has run for
            # `timeout`, every item of it has passed its deadline: its answer would reach
            # no one, and a hung item would keep the stage from ever finishing. Its worker
            # is killed (and the batch handled as a crash).
            timed = ProcessExecutor(workers or 1, execution_timeout=self.timeout)
            executor, workers = timed, None
        return load(
            model,
            executor=executor,
            workers=workers,
            max_batch_size=self.batch_size,
            max_wait=self.max_wait,
            max_queue=max(self.concurrency, self.batch_size),
            timeout=self.timeout,
            name=self.name,
        )


@dataclass(frozen=True, slots=True)
class _Listed:
    """Materialises a flat-map function's outputs in the worker, where they are made."""

    fn: Callable[[Any], Iterable[Any]]

    def __call__(self, item: Any) -> list[Any]:
        return outputs_of(self.fn(item))


def outputs_of(returned: Any) -> list[Any]:
    """A flat stage's outputs for one item, as a list.

    Raises:
        TypeError: ``returned`` is not iterable (the item fails, not the run).
        Exception: whatever a generator raises while it runs.
    """
    if isinstance(returned, list):
        return returned
    try:
        outputs = iter(returned)
    except TypeError:
        raise TypeError(
            f"a flat stage must return an iterable of outputs, not {type(returned).__name__}"
        ) from None
    return list(outputs)


def stage(
    fn: Any,
    /,
    *,
    name: str | None = None,
    executor: ExecutorName | Executor | None = None,
    workers: int | None = None,
    concurrency: int | None = None,
    batched: bool = False,
    batch_size: int | None = None,
    max_wait: float | None = None,
    flat: bool = False,
    retry: Retry | int | None = None,
    timeout: float | None = None,
    rate: RateLimit | float | None = None,
    queue: int | None = None,
) -> Stage:
    """Describes a pipeline stage.

    ::

        stage(fetch, concurrency=200, retry=Retry(attempts=3), rate=100)   # async, per item
        stage(parse, executor="thread", workers=2)                          # sync, per item
        stage(Classifier, executor="process", workers=2)                    # a model, batched
        stage(lambda x: x["score"], executor="inline")                     # cheap, on the loop
        stage(split_sentences, flat=True)                                   # 0..n outputs

    Args:
        fn: a function of one item (sync or ``async def``); with ``batched``, a function of
            a list of items returning one output per item; or an :class:`~asyncml.Model`
            class or instance (always batched).
        name: shown in progress, statistics and dead letters (default: the function's or
            model's name).
        executor: where it runs. ``"inline"``: on the event loop: the only choice for
            ``async def`` functions, and for cheap sync functions the fastest (keep them
            cheap: they hold the loop). ``"thread"`` (default for sync functions and
            models), ``"process"`` (GIL-bound or crash-prone code), ``"ray"`` (Ray
            actors, see the Ray guide), or an :class:`~asyncml.executors.Executor`.
        workers: thread or process workers, or Ray actors (default 1).
        concurrency: items in progress at this stage at once (default: 16 for ``async``
            functions, ``2 * batch_size`` for worker stages; 1 for inline sync functions).
        batched: ``fn`` takes a list of items.
        batch_size: most items per call of a batched function or model, or per hand-off
            to a worker for a per-item function (default: the model's, else 64 for batched
            functions and 32 for per-item functions on workers).
        max_wait: seconds a free worker may hold a partial batch (see :func:`asyncml.load`).
        flat: ``fn`` returns an iterable of outputs, zero or more per item: a filter or a
            flat-map. Outputs of one item keep their order.
        retry: a :class:`Retry` policy, or a number of attempts (default: 1, no retry).
        timeout: seconds per item (``async`` functions: the call is cancelled; workers: an
            item still queued when its deadline passes is never computed).
        rate: at most this many items per second (a number, or a :class:`RateLimit`).
        queue: capacity of the stage's input queue in items (default: ``2 * concurrency``,
            at least 64).

    Raises:
        TypeError: ``fn`` is not callable, or the options do not fit it.
        ValueError: an option is out of range.
    """
    is_model = _is_model(fn)
    if not callable(fn) and not is_model:  # a Model instance need not be callable
        raise TypeError(f"a stage needs a function or a model, got {fn!r}")
    is_async = _is_async(fn)
    if is_model:
        batched = True
    if is_async and not batched:
        if executor not in (None, "inline"):
            raise TypeError(
                f"async function {_name(fn)!r} runs on the event loop: executor='inline'"
            )
        kind: Kind = "async"
    elif executor == "inline" and not is_async:
        if batched:
            raise TypeError(
                f"batched sync function {_name(fn)!r} cannot run inline; use executor='thread'"
            )
        if timeout is not None:
            raise TypeError(
                f"an inline sync function cannot be timed out ({_name(fn)!r}): make it async, "
                "or run it on executor='thread'"
            )
        kind = "inline"
    else:
        kind = "pool"
    if batch_size is None:
        batch_size = getattr(fn, "max_batch_size", None) if is_model else None
        batch_size = batch_size or (64 if batched else 32)
    if concurrency is None:
        concurrency = {"async": 16, "inline": 1, "pool": 2 * batch_size}[kind]
    _check_positive(concurrency=concurrency, batch_size=batch_size)
    if timeout is not None and not timeout > 0:
        raise ValueError(f"timeout must be a number of seconds > 0, got {timeout!r}")
    if isinstance(retry, int):
        retry = Retry(attempts=retry)
    if isinstance(rate, int | float):
        rate = RateLimit(float(rate))
    queue = max(64, 2 * concurrency) if queue is None else queue
    _check_positive(queue=queue)
    return Stage(
        fn=fn,
        name=name or _name(fn),
        kind=kind,
        executor=executor or "auto",
        workers=workers,
        concurrency=concurrency,
        batched=batched,
        batch_size=batch_size,
        max_wait=max_wait,
        flat=flat,
        retry=retry or NO_RETRY,
        timeout=timeout,
        rate=rate,
        queue=queue,
    )


def _is_model(fn: object) -> bool:
    return isinstance(fn, Model) or (isinstance(fn, type) and issubclass(fn, Model))


def _is_async(fn: object) -> bool:
    if _is_model(fn):
        predict = fn.predict  # type: ignore[attr-defined]
        return inspect.iscoroutinefunction(predict)
    call = getattr(fn, "__call__", None)  # noqa: B004 - an async __call__ counts too
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(call)


def _name(fn: object) -> str:
    if _is_model(fn):
        cls = fn if isinstance(fn, type) else type(fn)
        return getattr(fn, "name", None) or cls.__name__
    return getattr(fn, "__name__", None) or type(fn).__name__


def _check_positive(**values: int) -> None:
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{key} must be an int >= 1, got {value!r}")
