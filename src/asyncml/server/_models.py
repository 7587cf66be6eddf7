"""The served models: each one's lifecycle from loading to stopped, and readiness.

The app starts loading its models when its lifespan starts and serves at once: ``/healthz``
answers while weights load, ``/readyz`` and every model endpoint answer 503 until the
model's workers have all run ``setup()``. Models load concurrently; one that fails to start
stays failed (503, with its error) without taking the others down, and so does one whose
workers have all died with none able to restart (process workers replace a dead worker, and
the model stays ready while any worker is left). A pipeline is served the same way: ready
once every stage's workers are set up, failed once a stage has lost every worker for good,
or once a stage broke its run (a worker raised rather than failing an item), which also
leaves the other models serving.
"""

from __future__ import annotations

import asyncio
import copy
import enum
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping

from .._errors import AsyncmlError, Closed, SetupError
from ..pipeline import StageError
from ._problems import Problem, retry_after
from ._servable import Servable, Serves, answers_lists, broke, kind_of, servable

logger = logging.getLogger("asyncml.server")


class State(enum.Enum):
    """Where a served model is in its life."""

    LOADING = "loading"
    READY = "ready"
    #: it could not start, every worker died and none could be restarted, or (a pipeline)
    #: a stage broke its run
    FAILED = "failed"
    STOPPING = "stopping"
    STOPPED = "stopped"


class ServedModel:
    """One model (or pipeline) of the app, under the name it is served as."""

    def __init__(self, name: str, model: Servable):
        self.name = name
        self.model = model
        #: "model" or "pipeline", as messages call it
        self.kind = kind_of(model)
        #: each item's answer is a list of outputs, which the v2 protocol cannot carry
        self.answers_lists = answers_lists(model)
        self._state = State.LOADING
        self.error: AsyncmlError | None = None
        #: it was entered: its statistics can be read (it may have failed or stopped since)
        self.started = False
        self._settled = asyncio.Event()  # set once it is ready, failed or stopped

    @property
    def state(self) -> State:
        """Where the model is. A ready model whose workers have all died, none of which
        could be restarted, is failed from then on (read from its statistics, so that
        probes see it even when no request has run into it)."""
        self._check_workers()
        return self._state

    def _check_workers(self) -> None:
        if self._state is State.READY and self.model.statistics().broken:
            failure = broke(self.model)
            if failure is not None:
                self._fail(_stopped(self.name, failure))
                return
            workers = "every worker" if self.kind == "model" else "every worker of a stage"
            message = f"{self.kind} {self.name!r}: {workers} died and none could be restarted"
            self._fail(SetupError(message, model=self.name))

    def require_ready(self, retry_seconds: float) -> Servable:
        """The running model.

        Raises:
            Problem: 503 (with ``Retry-After``) unless the model is ready.
        """
        if self._state is State.READY:  # not self.state: statistics are no per-request cost
            return self.model
        reason = {
            State.LOADING: "is loading",
            State.FAILED: f"failed: {self.error}",
            State.STOPPING: "is shutting down",
            State.STOPPED: "is stopped",
        }[self._state]
        raise Problem(
            503,
            "unavailable",
            f"{self.kind} {self.name!r} {reason}",
            headers=retry_after(retry_seconds),
        )

    def note_error(self, error: AsyncmlError) -> None:
        """Marks the model failed when an item's error says that no worker can run it any
        more: a :class:`SetupError`, which items get only once the last worker has died and
        could not be restarted (for a pipeline, a stage's error caused by one). Other errors
        (an item that kills its worker, a model error, a deadline, overload) leave the model
        ready."""
        if isinstance(error, SetupError):
            self._fail(error)
        elif isinstance(error, StageError) and error.cause_type == SetupError.__qualname__:
            self._check_workers()

    def _fail(self, error: AsyncmlError) -> None:
        if self._state is State.READY:
            self._state = State.FAILED
            self.error = copy.copy(error)
            self.error.index = None  # the model's error, not one item's

    async def run(self, stop: asyncio.Event, abandoned: Callable[[], bool]) -> None:
        """Loads the model, serves it until ``stop`` is set, then drains and closes it;
        if the server gave up on requests (``abandoned()``), closes it without draining:
        their items are answered by no one, and the shutdown timeout is over."""
        try:
            async with self.model:
                self.started = True
                self._state = State.READY
                self._settled.set()
                await stop.wait()
                if self._state is State.READY:
                    self._state = State.STOPPING
                if abandoned():
                    raise _Abandoned
        except _Abandoned:
            pass
        except AsyncmlError as error:  # setup() failed, or so did close()
            if self._state is State.LOADING:
                self._state, self.error = State.FAILED, error
                return
            raise
        except Exception as error:
            failure = broke(self.model)
            if failure is None or failure.__cause__ is not error:
                raise
            # A stage broke the pipeline's run (its task group cancelled this task, and
            # leaving the block raised the worker's error): the pipeline failed, and the
            # other models serve on.
            logger.error("%s", failure, exc_info=error)
            if self._state is not State.FAILED:
                self._state, self.error = State.FAILED, _stopped(self.name, failure)
        finally:
            self._settled.set()
            if self._state is not State.FAILED:
                self._state = State.STOPPED

    async def wait_ready(self) -> None:
        """Returns once the model is ready.

        Raises:
            SetupError: it failed to start (or its workers all died).
            Closed: it stopped before it was ready.
        """
        await self._settled.wait()
        if self._state is State.FAILED:
            assert self.error is not None
            raise self.error
        if self._state is not State.READY:
            message = f"{self.kind} {self.name!r} stopped before it was ready"
            raise Closed(message, model=self.name)


class _Abandoned(Exception):
    """Leaves a served model's block so that it closes without draining."""


def _stopped(name: str, failure: AsyncmlError) -> Closed:
    """The error of a pipeline whose run broke, as its calls get it."""
    return Closed(f"pipeline {name!r} stopped: {failure}", model=name)


class Models:
    """The app's models (and pipelines) by name."""

    def __init__(self, models: Mapping[str, Serves] | Iterable[Serves]):
        if isinstance(models, Mapping):
            pairs = [(name, servable(model, name)) for name, model in models.items()]
        else:
            pairs = [(served.name, served) for served in (servable(m, None) for m in models)]
        self._by_name: dict[str, ServedModel] = {}
        for name, model in pairs:
            if not name or "/" in name:
                raise ValueError(f"a model's name must be non-empty and free of '/', not {name!r}")
            if name in self._by_name:
                raise ValueError(f"two models are named {name!r}: give them distinct names")
            self._by_name[name] = ServedModel(name, model)
        if not self._by_name:
            raise ValueError("no models to serve")
        #: The server is stopping: a request it cancels is answered 503 (see
        #: ``ServingApp.note_server_stopping``).
        self.stopping = False
        #: The stopping server gave up on requests still running: the models then close
        #: without draining what no one awaits.
        self.abandoned = False

    def __iter__(self) -> Iterator[ServedModel]:
        return iter(self._by_name.values())

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def get(self, name: str) -> ServedModel:
        """The model served as ``name``.

        Raises:
            Problem: 404 if there is none.
        """
        served = self._by_name.get(name)
        if served is None:
            raise Problem(404, "model_not_found", f"no model named {name!r}")
        return served

    @property
    def ready(self) -> bool:
        """Every model is ready."""
        return all(served.state is State.READY for served in self)

    async def run(self, stop: asyncio.Event) -> None:
        """Loads every model concurrently and serves them until ``stop`` is set."""
        async with asyncio.TaskGroup() as group:
            for served in self:
                group.create_task(served.run(stop, lambda: self.abandoned))

    async def wait_ready(self) -> None:
        """Returns once every model is ready (see :meth:`ServedModel.wait_ready`)."""
        for served in self:
            await served.wait_ready()
