"""Ray actors: the same models on a cluster, batched by the same batcher in the driver.

Each worker is a Ray actor holding one model instance. The batcher and the callers stay in
the driver's event loop; one actor call carries one whole batch, whose arrays travel
through Ray's object store (a large array is put there once, and the actor reads it
without a copy). One asyncio task per actor (its *driver*) takes batches from one queue,
so the next batch always goes to an actor that is free, and awaits the actor's answer as an
``ObjectRef``: the event loop never blocks on Ray. Calls into Ray that may block (starting
Ray, creating and killing actors, putting a large batch in the object store) run in a
thread.

An actor whose process dies is replaced, and its batch is handled exactly as the process
executor handles a dead worker's (see ``_crash_recovery``): retried whole on another actor,
then split, until an item that keeps killing actors fails alone with ``WorkerCrashed``.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._batch import BatchOutcome
from .._errors import AsyncmlError, ModelError, SetupError
from .._model import ModelSpec
from .._shield import wait_shielded
from .._threads import IntraOpThreads
from ._base import BatchDone, Executor, await_startup, close_failed, require_sync
from ._crash_recovery import MAX_FAILED_RESTARTS, CrashRecovery, Part, restart_delay
from ._ray_actor import ActorInfo, ModelActor
from ._wire import pack, unpack_outcome

#: A batch whose arrays hold this many bytes is put in the object store from a thread, so
#: that the copy does not hold up the event loop.
_PUT_IN_THREAD_BYTES = 1 << 20
_WORKER = "a Ray actor"
#: Seconds an actor's model has to close() before the actor is killed.
_CLOSE_GRACE = 10.0


class _StartedRay:
    """The Ray this process started for its executors, shared by them: the last to close
    shuts it down (two models starting at once would otherwise each start one)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0

    def join(self, ray: Any, address: str | None, options: dict[str, Any]) -> bool:
        """Starts Ray unless this process is connected to one; True if the caller now
        holds a share of a Ray that asyncml started (blocks: call it in a thread)."""
        with self._lock:
            if not ray.is_initialized():
                ray.init(address=address, **options)
                self._users = 0
            elif self._users == 0:
                return False  # the user's own Ray
            self._users += 1
            return True

    def leave(self, ray: Any) -> None:
        """Gives a share back; the last one shuts Ray down (blocks: call it in a thread)."""
        with self._lock:
            self._users -= 1
            if self._users == 0:
                ray.shutdown()


_STARTED_RAY = _StartedRay()


@dataclass(slots=True, eq=False)
class _Actor:
    """One live actor: its handle and where it runs."""

    handle: Any
    info: ActorInfo


class _ActorDied(Exception):
    """The actor died (or was killed) while it held a part; ``reason`` says how."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class RayExecutor(Executor):
    """Runs a synchronous model in a pool of Ray actors, one model instance per actor.

    Ray is imported when the executor starts, never before. If Ray is already initialised in
    this process, its cluster is used; otherwise ``ray.init(address=address, **init_options)``
    connects to a cluster or, with no address, starts a local one. asyncml shuts down only a
    Ray it started itself, when the executor closes.

    The model (class, instance or function) is pickled to each actor with Ray's pickler; the
    modules it comes from must be importable on the cluster's nodes, as must asyncml.

    With ``min_actors < max_actors`` the pool scales itself: when a batch is waiting and
    every actor is busy, one more actor starts (up to ``max_actors``); an actor with no
    batch for ``idle_timeout`` seconds stops (down to ``min_actors``).

    Attributes:
        restarts: how many times a dead actor was replaced.
        served: batches run per actor (``"node ip:pid"``), the dead ones included.

    Args:
        actors: actors started with the pool (default: ``min_actors``, else 1).
        num_cpus: CPUs Ray reserves for each actor.
        num_gpus: GPUs Ray reserves for each actor.
        min_actors: fewest actors the pool scales down to (default: ``actors``).
        max_actors: most actors the pool scales up to (default: ``actors``).
        idle_timeout: seconds an actor beyond ``min_actors`` may stay idle before it stops.
        address: the Ray cluster to connect to (e.g. ``"ray://head:10001"`` or
            ``"auto"``) when Ray is not yet initialised.
        init_options: further keyword arguments for ``ray.init`` when asyncml calls it.
        intra_op_threads: threads each actor's BLAS/OpenMP/torch pools may use: ``"auto"``
            (the actor's ``num_cpus``, at least 1), an int, or ``None`` to leave them alone.
        max_attempts: runs an item gets when its actor keeps dying, before it fails alone
            with :class:`WorkerCrashed`.
        execution_timeout: seconds a batch may run before its actor is killed (handled like
            a crash); ``None`` for no limit.
        start_timeout: seconds to wait for an actor to be placed and set up (on a cluster
            that lacks the resources, Ray would wait for ever); ``None`` for no limit.
    """

    def __init__(
        self,
        actors: int | None = None,
        *,
        num_cpus: float = 1,
        num_gpus: float = 0,
        min_actors: int | None = None,
        max_actors: int | None = None,
        idle_timeout: float = 60.0,
        address: str | None = None,
        init_options: Mapping[str, Any] | None = None,
        intra_op_threads: IntraOpThreads = "auto",
        max_attempts: int = 3,
        execution_timeout: float | None = None,
        start_timeout: float | None = 300.0,
    ):
        for name, value in (("actors", actors), ("min_actors", min_actors)):
            if value is not None:
                _check_count(name, value)
        initial = actors if actors is not None else (min_actors or 1)
        low = initial if min_actors is None else min_actors
        high = initial if max_actors is None else _check_count("max_actors", max_actors)
        if not low <= initial <= high:
            raise ValueError(
                f"need min_actors <= actors <= max_actors, got {low}, {initial}, {high}"
            )
        for name, amount in (("num_cpus", num_cpus), ("num_gpus", num_gpus)):
            if isinstance(amount, bool) or not isinstance(amount, int | float) or amount < 0:
                raise ValueError(f"{name} must be a number >= 0, got {amount!r}")
        _check_count("max_attempts", max_attempts)
        for name, seconds in (
            ("idle_timeout", idle_timeout),
            ("execution_timeout", execution_timeout),
            ("start_timeout", start_timeout),
        ):
            if seconds is not None and not seconds > 0:
                raise ValueError(f"{name} must be > 0 seconds, got {seconds!r}")
        if intra_op_threads == "auto":
            intra_op_threads = max(1, int(num_cpus))
        elif intra_op_threads is not None:
            _check_count("intra_op_threads", intra_op_threads)
        self._initial, self._min, self._max = initial, low, high
        self._num_cpus, self._num_gpus = num_cpus, num_gpus
        self._idle_timeout = idle_timeout
        self._address = address
        self._init_options = dict(init_options or {})
        self._threads: int | None = intra_op_threads
        self._execution_timeout = execution_timeout
        self._start_timeout = start_timeout
        # Unbounded in form only: it holds at most ``capacity`` batches (and their halves).
        self._parts: asyncio.Queue[Part | None] = asyncio.Queue()
        self._recovery = CrashRecovery(_WORKER, max_attempts, self._parts.put_nowait)
        self._ray: Any = None
        self._actor_class: Any = None
        self._spec: ModelSpec | None = None
        self._owns_ray = False
        self._live: set[_Actor] = set()  # every actor not yet killed, for a hard stop
        self._drivers: list[asyncio.Task[None]] = []  # owned: aclose awaits each one
        self._slots = 0  # drivers that hold or are starting an actor
        self._starting = 0  # drivers starting an actor for a larger pool
        self._idle = 0  # drivers waiting for a part
        self._close_errors: list[ModelError] = []
        self._closing = asyncio.Event()
        self.restarts = 0
        self.served: Counter[str] = Counter()

    @property
    def capacity(self) -> int:
        return self._max

    @property
    def broken(self) -> AsyncmlError | None:
        """The error every item fails with once no actor is left and none could be
        started; ``None`` while the pool can run items."""
        return self._recovery.broken

    @property
    def actors(self) -> int:
        """How many actors are running or starting now."""
        return len(self._live)

    def check(self, spec: ModelSpec) -> None:
        require_sync(spec, "Ray actors")

    async def start(self, spec: ModelSpec) -> None:
        self._spec = spec
        self._recovery.model = spec.name
        connecting = asyncio.ensure_future(asyncio.to_thread(self._connect))
        try:
            await wait_shielded(connecting)  # a thread cannot be stopped: know how it ended
        except asyncio.CancelledError:
            await self._abort()
            raise
        try:
            connecting.result()
        except Exception as exc:
            raise SetupError(
                f"model {spec.name!r}: cannot start Ray: {type(exc).__name__}: {exc}",
                model=spec.name,
            ) from exc
        actors: list[_Actor] = []
        starts = [asyncio.ensure_future(self._add_actor(actors)) for _ in range(self._initial)]
        await await_startup(starts, self._abort, model=spec.name, kind="Ray actor")
        for actor in actors:
            self._drive(actor)

    def submit(self, items: Sequence[Any], done: BatchDone) -> None:
        part = self._recovery.new_part(items, done)
        if part is None:
            return
        self._parts.put_nowait(part)
        if self._parts.qsize() > self._idle + self._starting and self._slots < self._max:
            self._drive(None)  # every actor is busy: one more, which starts its own actor

    async def aclose(self, *, graceful: bool) -> None:
        self._recovery.closing = True
        self._closing.set()
        if not graceful:
            closed = self._recovery.closed("was closed before the item ran")
            self._recovery.fail_all(self._drain(), closed)
            await self._kill(list(self._live))  # running parts fail with Closed
        for driver in self._drivers:
            if not driver.done():
                self._parts.put_nowait(None)
        drivers = asyncio.gather(*self._drivers)
        await wait_shielded(drivers)
        await self._kill(list(self._live))  # none, unless a driver failed
        if self._owns_ray:
            self._owns_ray = False
            await asyncio.to_thread(_STARTED_RAY.leave, self._ray)
        drivers.result()  # a driver's own failure (its part has failed already)
        if self._close_errors:
            name = self._spec.name if self._spec else "?"
            raise close_failed(name, self._close_errors[0])

    # -- starting Ray and actors (blocking calls run in a thread) ------------------------------

    def _connect(self) -> None:
        try:
            import ray
        except ImportError:
            raise ImportError("executor='ray' needs Ray: pip install ray") from None

        self._ray = ray
        self._owns_ray = _STARTED_RAY.join(ray, self._address, self._init_options)
        options: dict[str, Any] = {
            "num_cpus": self._num_cpus,
            "num_gpus": self._num_gpus,
            "max_restarts": 0,  # asyncml replaces dead actors itself, and retries their batch
            "max_task_retries": 0,
            "scheduling_strategy": "SPREAD",  # replicas on as many nodes as possible
        }
        self._actor_class = ray.remote(ModelActor).options(**options)

    async def _add_actor(self, actors: list[_Actor]) -> None:
        actors.append(await self._new_actor())

    async def _new_actor(self) -> _Actor:
        """Creates an actor and waits for its ``setup()`` and ``warmup()``.

        Raises:
            ModelError: they raised (the actor is killed).
            Exception: Ray could not create or place it, or it died while starting.
        """
        spec = self._spec
        assert spec is not None
        handle = await asyncio.to_thread(self._actor_class.remote, spec, self._threads)
        actor = _Actor(handle, ActorInfo(0, "", "?"))
        self._live.add(actor)
        try:
            async with asyncio.timeout(self._start_timeout):
                info, error = await handle.start.remote()
        except TimeoutError:
            await self._kill([actor])
            gpus = f" and {self._num_gpus} GPU(s)" if self._num_gpus else ""
            raise TimeoutError(
                f"the actor was not placed and set up within start_timeout="
                f"{self._start_timeout} s: Ray may have no {self._num_cpus} CPU(s){gpus} free "
                "for it (the actors of every Ray model and stage must fit the cluster together)"
            ) from None
        except BaseException:
            await self._kill([actor])
            raise
        if error is not None:
            await self._kill([actor])
            raise error
        actor.info = info
        return actor

    async def _kill(self, actors: list[_Actor]) -> None:
        actors = [actor for actor in actors if actor in self._live]
        self._live.difference_update(actors)
        if actors:
            ray = self._ray
            await asyncio.to_thread(lambda: [ray.kill(a.handle, no_restart=True) for a in actors])

    async def _abort(self) -> None:
        """A start-up failed: no actor is left, nor a Ray that asyncml started."""
        await self._kill(list(self._live))
        if self._owns_ray:
            self._owns_ray = False
            await asyncio.to_thread(_STARTED_RAY.leave, self._ray)

    # -- drivers: one task per actor -----------------------------------------------------------

    def _drive(self, actor: _Actor | None) -> None:
        self._slots += 1
        task = asyncio.get_running_loop().create_task(self._run_actor(actor))
        # Finished drivers are dropped, unless aclose must raise what one raised.
        self._drivers = [d for d in self._drivers if not d.done() or d.cancelled() or d.exception()]
        self._drivers.append(task)

    async def _run_actor(self, actor: _Actor | None) -> None:
        """Feeds one actor slot until the pool closes or the slot retires. A dead actor is
        replaced, with backoff while its replacement fails to start; a slot that cannot
        start one is given up."""
        if actor is None:
            self._starting += 1
            try:
                actor = await self._replacement(growing=True)
            finally:
                self._starting -= 1
        while actor is not None and (part := await self._next_part()) is not None:
            try:
                outcome = await self._run(actor, part.items)
            except _ActorDied as death:
                self._recovery.crashed(part, death.reason)
                actor = await self._replacement(growing=False)
            except BaseException as exc:  # a failure of ours: the part still gets its outcome
                name = self._spec.name if self._spec else "?"
                self._recovery.fail(part, ModelError.from_exception(exc, model=name))
                self._slots -= 1
                raise  # to aclose, which also stops the actor
            else:
                self.served[actor.info.label()] += 1
                self._recovery.finished(part, outcome)
        if actor is not None:
            await self._retire(actor)

    async def _next_part(self) -> Part | None:
        """The next part to run, or None: the pool closes, or this actor idled long enough
        to retire."""
        self._idle += 1
        try:
            if self._slots <= self._min or self._closing.is_set():
                return await self._parts.get()
            try:
                async with asyncio.timeout(self._idle_timeout):
                    return await self._parts.get()
            except TimeoutError:
                if self._slots > self._min and self._parts.empty():
                    self._slots -= 1  # retires
                    return None
                return await self._parts.get()  # a part came as the time ran out
        finally:
            self._idle -= 1

    async def _replacement(self, *, growing: bool) -> _Actor | None:
        """A newly started actor, or None once the pool closes or too many starts failed."""
        spec = self._spec
        assert spec is not None
        last: BaseException | None = None
        for attempt in range(MAX_FAILED_RESTARTS):
            delay = restart_delay(attempt)
            if delay:
                # Wakes early when the pool closes: no wait outlives it.
                try:
                    async with asyncio.timeout(delay):
                        await self._closing.wait()
                except TimeoutError:
                    pass
            if self._closing.is_set():
                return None
            try:
                actor = await self._new_actor()
            except Exception as exc:
                last = exc
                continue
            if not growing:
                self.restarts += 1
            return actor
        self._given_up(spec, last)
        return None

    def _given_up(self, spec: ModelSpec, last: BaseException | None) -> None:
        """A slot could not start an actor; with no actor left, nothing can run any more."""
        self._slots -= 1
        if self._slots or self._closing.is_set():
            return
        error = SetupError(
            f"model {spec.name!r}: no Ray actor is left, and none could be started "
            f"({MAX_FAILED_RESTARTS} failed starts in a row; last: {last!r})",
            model=spec.name,
        )
        self._recovery.broken = error
        self._recovery.fail_all(self._drain(), error)

    async def _retire(self, actor: _Actor) -> None:
        """Closes the model in ``actor`` (unless it was killed) and stops the actor."""
        if actor in self._live:
            try:
                async with asyncio.timeout(_CLOSE_GRACE):
                    error: ModelError | None = await actor.handle.close.remote()
            except (TimeoutError, self._ray.exceptions.RayError):
                error = None  # it hung or died on its way out: it is killed below
            if error is not None:
                self._close_errors.append(error)
        await self._kill([actor])

    def _drain(self) -> list[Part]:
        parts = []
        while not self._parts.empty():
            part = self._parts.get_nowait()
            if part is not None:
                parts.append(part)
        return parts

    # -- one batch on one actor ----------------------------------------------------------------

    async def _run(self, actor: _Actor, items: Sequence[Any]) -> BatchOutcome:
        """Runs ``items`` on ``actor``.

        Raises:
            _ActorDied: the actor died, or ran over the execution timeout and was killed.
        """
        ray = self._ray
        payload = pack(items)
        try:
            if _array_bytes(payload) >= _PUT_IN_THREAD_BYTES:
                payload = await asyncio.to_thread(ray.put, payload)
            ref = actor.handle.run.remote(payload)
        except Exception as exc:  # an item Ray cannot pickle: nothing was sent
            return await self._run_sendable(actor, items, exc)
        try:
            async with asyncio.timeout(self._execution_timeout):
                outcome: BatchOutcome = await ref
        except TimeoutError:
            await self._kill([actor])
            raise _ActorDied(
                f"ran over the {self._execution_timeout} s execution timeout"
            ) from None
        except ray.exceptions.RayTaskError as exc:  # the call failed in the actor, not the model
            name = self._spec.name if self._spec else "?"
            return BatchOutcome.failure(len(items), ModelError.from_exception(exc, model=name))
        except ray.exceptions.RayError as exc:
            await self._kill([actor])
            raise _ActorDied(_death(actor.info, exc)) from None
        return unpack_outcome(outcome)

    async def _run_sendable(
        self, actor: _Actor, items: Sequence[Any], failure: Exception
    ) -> BatchOutcome:
        """Runs the items that pickle; each other one fails with a ModelError saying why."""
        name = self._spec.name if self._spec else "?"
        dumps = self._ray.cloudpickle.dumps
        errors: dict[int, AsyncmlError] = {}
        for position, item in enumerate(items):
            try:
                dumps(item)
            except Exception as exc:
                errors[position] = _unsendable(name, exc)
        if not errors:  # each item pickles alone, but not the batch
            return BatchOutcome.failure(len(items), _unsendable(name, failure))
        sendable = [position for position in range(len(items)) if position not in errors]
        values: list[Any] = [None] * len(items)
        if sendable:
            outcome = await self._run(actor, [items[position] for position in sendable])
            for position, value in zip(sendable, outcome.values, strict=True):
                values[position] = value
            for part_index, error in (outcome.errors or {}).items():
                errors[sendable[part_index]] = error
        return BatchOutcome(values, errors)


def _check_count(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return value


def _array_bytes(payload: Any) -> int:
    """Bytes of the numpy arrays in a packed batch (0 for anything else)."""
    stacked = getattr(payload, "stacked", None)
    if isinstance(stacked, np.ndarray):
        return stacked.nbytes
    if isinstance(payload, list | tuple):
        return sum(item.nbytes for item in payload if isinstance(item, np.ndarray))
    return 0


def _death(info: ActorInfo, error: Exception) -> str:
    """How an actor died, as far as Ray tells: Ray reports neither the signal nor the exit
    status of an actor's process, only its kind of exit."""
    where = f"actor process {info.pid} on {info.node_ip}"
    message = str(error)
    kind = re.search(r"Worker exit type: (\w+)", message)
    if kind is not None:
        return f"{where} died (Ray: {kind.group(1)})"
    first = message.strip().splitlines()[0] if message.strip() else type(error).__name__
    return f"{where} died ({type(error).__name__}: {first})"


def _unsendable(model: str, exc: BaseException) -> ModelError:
    return ModelError(
        f"model {model!r}: the item cannot be sent to a Ray actor: {type(exc).__name__}: {exc}",
        model=model,
        cause=exc,
    )
