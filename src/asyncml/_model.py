"""What a model is: a :class:`Model` subclass, an instance used as a template, or a function.

Whatever form the user gives, :func:`model_spec` turns it into one :class:`ModelSpec`: a name,
the batching options, and a factory that builds a fresh :class:`Model` for each worker.
"""

from __future__ import annotations

import copy
import inspect
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, Literal, TypeVar, cast

import numpy as np

In = TypeVar("In")
Out = TypeVar("Out")

Collate = Literal["list", "stack"]
_COLLATES: tuple[Collate, ...] = ("list", "stack")


class Model(Generic[In, Out]):
    """Base class for models: load once per worker in :meth:`setup`, then :meth:`predict`.

    Each worker builds its own instance (from the class, or a deep copy of an instance given
    as a template) and calls ``setup()`` then ``warmup()`` before its first batch, and
    ``close()`` when it stops. ``predict`` may be ``async def`` for models that await remote
    services; such models run on the event loop (``executor="inline"``).

    The class attributes are the model's batching defaults; the options given to
    :func:`asyncml.load` override them.
    """

    #: Name shown in statistics, errors and logs; defaults to the class name.
    name: ClassVar[str | None] = None
    #: Largest number of items passed to one ``predict`` call.
    max_batch_size: ClassVar[int] = 64
    #: Longest (seconds) a free worker may hold a partial batch to let it grow, while other
    #: batches are running. ``0`` sends work the moment a worker is free.
    max_wait: ClassVar[float] = 0.0
    #: ``"list"`` passes the batch as a list; ``"stack"`` as ``numpy.stack(items)``.
    collate: ClassVar[Collate] = "list"
    #: Cost of one item (e.g. ``staticmethod(len)``) for length-aware batching: batches of
    #: items of similar cost; it runs in the batcher, so keep it cheap. ``None``: off.
    item_cost: ClassVar[Any] = None  # a function of one item, or a staticmethod of one
    #: Budget of a batch's padded cost (its size times its dearest item's cost).
    max_batch_cost: ClassVar[float | None] = None

    def setup(self) -> Any:
        """Loads weights or opens resources; runs once per worker, in the worker."""

    def warmup(self) -> Any:
        """Optional first call (e.g. a dummy batch) before the worker takes real work."""

    def predict(self, batch: Any) -> Any:
        """Returns one output per item of ``batch``, in order (a sequence or an array)."""
        raise NotImplementedError(f"{type(self).__name__} must implement predict(batch)")

    def close(self) -> Any:
        """Releases what ``setup()`` acquired; runs once per worker when it stops."""


class FunctionModel(Model[Any, Any]):
    """Adapts a plain ``def f(batch) -> outputs`` (or ``async def``) to :class:`Model`."""

    def __init__(self, fn: Callable[[Any], Any]):
        self.fn = fn

    def predict(self, batch: Any) -> Any:
        return self.fn(batch)


class AsyncFunctionModel(Model[Any, Any]):
    """Adapts ``async def f(batch) -> outputs`` to :class:`Model`."""

    def __init__(self, fn: Callable[[Any], Awaitable[Any]]):
        self.fn = fn

    async def predict(self, batch: Any) -> Any:
        return await self.fn(batch)


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """Everything an executor needs to run a model, in a form that pickles."""

    name: str
    factory: Callable[[], Model[Any, Any]]
    #: ``predict`` is ``async def``
    is_async: bool
    max_batch_size: int
    max_wait: float
    collate: Collate
    #: ``setup``, ``warmup`` or ``close`` is ``async def``
    async_lifecycle: bool = False

    def create(self) -> Model[Any, Any]:
        """Builds a fresh model instance for one worker (``setup()`` not yet called)."""
        return self.factory()


@dataclass(frozen=True, slots=True)
class _FromTemplate:
    template: Model[Any, Any]

    def __call__(self) -> Model[Any, Any]:
        return copy.deepcopy(self.template)


@dataclass(frozen=True, slots=True)
class _FromFunction:
    fn: Callable[..., Any]
    is_async: bool

    def __call__(self) -> Model[Any, Any]:
        return AsyncFunctionModel(self.fn) if self.is_async else FunctionModel(self.fn)


def model_spec(
    model: object,
    *,
    name: str | None = None,
    max_batch_size: int | None = None,
    max_wait: float | None = None,
    collate: str | None = None,
) -> ModelSpec:
    """Normalises a model class, instance or function into a :class:`ModelSpec`.

    Raises:
        TypeError: ``model`` is none of the accepted forms.
        ValueError: a batching option is out of range.
    """
    if isinstance(model, type) and issubclass(model, Model):
        factory: Callable[[], Model[Any, Any]] = model
        defaults: Model[Any, Any] | type[Model[Any, Any]] = model
        is_async = inspect.iscoroutinefunction(model.predict)
        default_name = model.name or model.__name__
    elif isinstance(model, Model):
        factory = _FromTemplate(model)
        defaults = model
        is_async = inspect.iscoroutinefunction(model.predict)
        default_name = model.name or type(model).__name__
    elif callable(model) and not isinstance(model, type):
        is_async = inspect.iscoroutinefunction(model) or inspect.iscoroutinefunction(
            getattr(model, "__call__", None)  # noqa: B004 - an async __call__ counts too
        )
        factory = _FromFunction(model, is_async)
        defaults = Model
        default_name = getattr(model, "__name__", None) or type(model).__name__
    else:
        raise TypeError(f"expected a Model subclass, a Model instance or a function, got {model!r}")
    lifecycle = [getattr(defaults, hook, None) for hook in ("setup", "warmup", "close")]
    spec = ModelSpec(
        name=name or default_name,
        async_lifecycle=any(inspect.iscoroutinefunction(hook) for hook in lifecycle),
        factory=factory,
        is_async=is_async,
        max_batch_size=defaults.max_batch_size if max_batch_size is None else max_batch_size,
        max_wait=defaults.max_wait if max_wait is None else max_wait,
        collate=defaults.collate if collate is None else collate,  # type: ignore[arg-type]
    )
    _validate(spec)
    return spec


def _validate(spec: ModelSpec) -> None:
    size, wait = spec.max_batch_size, spec.max_wait
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"max_batch_size must be an int >= 1, got {size!r}")
    if isinstance(wait, bool) or not isinstance(wait, int | float) or not 0 <= wait < math.inf:
        raise ValueError(f"max_wait must be a finite number of seconds >= 0, got {wait!r}")
    if not isinstance(spec.name, str) or not spec.name:
        raise ValueError(f"name must be a non-empty string, got {spec.name!r}")
    if spec.collate not in _COLLATES:
        raise ValueError(f"collate must be one of {_COLLATES}, got {spec.collate!r}")


def split_outputs(outputs: Any, expected: int) -> Sequence[Any]:
    """Returns ``outputs`` as a sequence of ``expected`` per-item outputs.

    Raises:
        ValueError: ``outputs`` has no length, or the wrong one (the caller adds the model).
    """
    if isinstance(outputs, list | tuple):
        seq: Sequence[Any] = outputs
    elif isinstance(outputs, np.ndarray) and outputs.ndim:
        seq = cast(Sequence[Any], outputs)  # its rows, kept as one array (one buffer to send)
    elif isinstance(outputs, str | bytes | dict) or not hasattr(outputs, "__getitem__"):
        raise ValueError(f"returned a {type(outputs).__name__}, not one output per input")
    else:
        try:
            # numpy arrays and the like: one row (a view, no copy) per item
            seq = list(outputs)
        except TypeError:  # e.g. a 0-d array
            raise ValueError(
                f"returned a {type(outputs).__name__} with no length, not one output per input"
            ) from None
    if len(seq) != expected:
        raise ValueError(f"returned {len(seq)} outputs for a batch of {expected} inputs")
    return seq


def grouping_defaults(model: object) -> tuple[Callable[[Any], float] | None, float | None]:
    """A model class's ``item_cost`` and ``max_batch_cost`` (read off the class, so that a
    plain function stored there is not bound as a method)."""
    cls = model if isinstance(model, type) else type(model)
    if not issubclass(cls, Model):
        return None, None
    cost: Callable[[Any], float] | None = cls.item_cost
    return cost, cls.max_batch_cost
