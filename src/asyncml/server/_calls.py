"""Running a request's items through a model (or a pipeline): bounded admission, deadlines,
disconnects.

Admission never waits: every item is queued with ``call_nowait``, and a full queue refuses
the whole request at once (503), withdrawing the items it had already queued. Once a
request's items have waited ``WATCH_AFTER`` seconds, the client's connection is watched: if
it goes away, the items are cancelled, and the batcher drops those not yet dispatched, so
nobody computes an answer no one will read. Most requests are answered sooner, and never
pay for a watcher (a task each). Deadlines travel with the items: the batcher fails an item
whose deadline passes before its batch is dispatched, without computing it. A pipeline does
the same stage by stage: each stage drops the withdrawn and expired items it takes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from typing import Any

from .._errors import AsyncmlError
from ._http import Receive
from ._models import ServedModel
from ._problems import ClientGone, from_error, invalid
from ._servable import Servable


async def run_items(
    served: ServedModel,
    model: Servable,
    items: Sequence[Any],
    *,
    item_timeout: float | None,
    receive: Receive,
    retry_seconds: float,
) -> list[Any]:
    """The outputs of ``model`` (``served``'s running model) for ``items``, in order.

    ``item_timeout`` (the request's) may tighten the model's own ``timeout``, never extend
    it: the server's operator sets the longest an item may take.

    Raises:
        Problem: 422 for more items than the model can ever hold at once; else the first
            failed item's error as a response (503 overloaded, 504 deadline, 500 model
            error, ...), the other items withdrawn.
        ClientGone: the client disconnected; its items were withdrawn.
    """
    if len(items) > model.max_queue:  # refused for good, not for now: no 503 and retry
        raise invalid(
            "inputs",
            f"holds {len(items)} items; {served.kind} {served.name!r} holds at most "
            f"{model.max_queue} at once",
        )
    if model.timeout is not None and (item_timeout is None or item_timeout > model.timeout):
        item_timeout = model.timeout
    futures: list[asyncio.Future[Any]] = []
    try:
        for item in items:
            futures.append(model.call_nowait(item, timeout=item_timeout))
        return await _outcomes(futures, receive)
    except AsyncmlError as error:
        if len(items) > 1 and error.index is None:
            error.index = len(futures)
        served.note_error(error)
        raise from_error(error, retry_seconds=retry_seconds) from None
    finally:
        _withdraw(futures)


#: Seconds a request's items wait before its client's connection is watched.
WATCH_AFTER = 0.05


class _Watch:
    """Watches for the client's disconnect, from ``WATCH_AFTER`` seconds on: on a disconnect,
    the request's unfinished items are withdrawn."""

    __slots__ = ("_futures", "_receive", "_task", "_timer")

    def __init__(self, futures: list[asyncio.Future[Any]], receive: Receive):
        self._futures = futures
        self._receive = receive
        self._task: asyncio.Task[bool] | None = None
        self._timer = asyncio.get_running_loop().call_later(WATCH_AFTER, self._start)

    def _start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(_disconnected(self._receive))
        self._task.add_done_callback(self._on_done)

    def _on_done(self, task: asyncio.Task[bool]) -> None:
        if _client_left(task):
            _withdraw(self._futures)  # at once: cancelling a queued item unqueues it

    @property
    def client_left(self) -> bool:
        return self._task is not None and _client_left(self._task)

    def stop(self) -> None:
        self._timer.cancel()
        if self._task is not None:
            self._task.cancel()


async def _outcomes(futures: list[asyncio.Future[Any]], receive: Receive) -> list[Any]:
    if len(futures) == 1:
        future = futures[0]
        if future.done():
            return [future.result()]
    elif all(future.done() for future in futures):
        return [future.result() for future in futures]
    watch = _Watch(futures, receive)
    try:
        results = []
        for index, future in enumerate(futures):
            try:
                results.append(await future)
            except AsyncmlError as error:
                if len(futures) > 1:
                    error.index = index
                raise
        return results
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if watch.client_left and task is not None and not task.cancelling():
            raise ClientGone from None  # the future was cancelled by the watcher, not us
        raise
    finally:
        watch.stop()


async def _disconnected(receive: Receive) -> bool:
    """Returns True when the client disconnects (the request body has been read already);
    False if the server cannot tell (its ``receive`` failed), so the items run on."""
    try:
        while (await receive())["type"] != "http.disconnect":
            pass
    except Exception:
        return False
    return True


def _client_left(watcher: asyncio.Task[bool]) -> bool:
    return watcher.done() and not watcher.cancelled() and watcher.result()


def _withdraw(futures: Iterable[asyncio.Future[Any]]) -> None:
    """Cancels unfinished items and marks failed ones as seen (no 'never retrieved')."""
    for future in futures:
        if not future.done():
            future.cancel()
        elif not future.cancelled():
            future.exception()
