"""What the app serves: a model from :func:`asyncml.load`, or a pipeline kept open.

Both answer items one at a time through the same small interface (:class:`Servable`), so
admission, deadlines, disconnects, readiness and draining work the same for either; only
metrics and the v2 protocol look at which one it is.
"""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Any, Protocol

from .._loaded import LoadedModel
from ..pipeline import Pipeline, PipelineFailed, PipelineService


class Statistics(Protocol):
    """A servable's snapshot, of which the app needs only one fact."""

    @property
    def broken(self) -> bool:
        """No worker is left and none can be started: every item would fail."""
        ...


class Servable(Protocol):
    """A thing the app serves: entered by the app's lifespan, called item by item."""

    @property
    def name(self) -> str: ...

    @property
    def max_queue(self) -> int:
        """Items it holds at most."""
        ...

    @property
    def timeout(self) -> float | None:
        """The default deadline of an item, in seconds."""
        ...

    def call_nowait(self, item: Any, *, timeout: float | None = None) -> asyncio.Future[Any]:
        """Queues ``item`` at once; raises :class:`~asyncml.Overloaded` when full."""
        ...

    def statistics(self) -> Statistics: ...

    async def __aenter__(self) -> Any: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None: ...


#: What :func:`asyncml.server.create_app` accepts to serve.
Serves = LoadedModel[Any, Any] | Pipeline | PipelineService


def servable(obj: object, name: str | None) -> Servable:
    """``obj`` ready to be entered by the app: a pipeline is opened (its own queue bound and
    deadline are :meth:`Pipeline.open`'s defaults; open it yourself to choose them).

    Raises:
        TypeError: ``obj`` is neither a model from :func:`asyncml.load` nor a pipeline.
    """
    if isinstance(obj, Pipeline):
        return obj.open(name=name)
    if isinstance(obj, LoadedModel | PipelineService):
        return obj
    raise TypeError(
        f"expected models made by asyncml.load() or pipelines, got {obj!r}"
        + ("" if name is None else f" for {name!r}")
    )


def kind_of(served: Servable) -> str:
    """``"pipeline"`` or ``"model"``, as errors and listings call it."""
    return "pipeline" if isinstance(served, PipelineService) else "model"


def answers_lists(served: Servable) -> bool:
    """Whether each item's answer is the list of its outputs (a pipeline with a ``flat``
    stage), which no tensor of one row per item can hold."""
    return isinstance(served, PipelineService) and served.flat


def broke(served: Servable) -> PipelineFailed | None:
    """What broke a served pipeline's run (a stage's worker raised), if something did."""
    return served.error if isinstance(served, PipelineService) else None
