"""One ASGI endpoint: runs its handler, answers once, and counts the answer."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from ._http import Receive, Reply, Scope, Send, problem_reply, send_reply
from ._metrics import CLIENT_GONE, RequestMetrics
from ._models import Models
from ._problems import ClientGone, Problem, retry_after

Handler = Callable[[Scope, Receive], Awaitable[Reply]]

logger = logging.getLogger("asyncml.server")

#: The ``model`` label of requests that name no served model.
NO_MODEL = "-"


class Endpoint:
    """An ASGI app around ``handler``: a :class:`Problem` becomes its error response, an
    unexpected exception a bare 500 (logged, never shown to the client), and every request
    is recorded in ``metrics`` under ``name``."""

    def __init__(
        self,
        name: str,
        handler: Handler,
        models: Models,
        metrics: RequestMetrics,
        retry_seconds: float,
    ):
        self._name = name
        self._handler = handler
        self._models = models
        self._metrics = metrics
        self._retry_seconds = retry_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # perf_counter, not loop.time(): uvloop's clock ticks in whole milliseconds.
        started = time.perf_counter()
        model = scope.get("path_params", {}).get("name", NO_MODEL)
        if model not in self._models:
            model = NO_MODEL  # unknown names would make unbounded label sets
        try:
            reply = await self._handler(scope, receive)
        except Problem as problem:
            reply = problem_reply(problem)
        except ClientGone:
            self._metrics.record(model, self._name, CLIENT_GONE, time.perf_counter() - started)
            return
        except asyncio.CancelledError:
            if not self._models.stopping:
                raise
            reply = self._abandoned()
        except Exception:
            logger.exception("%s %s failed", scope.get("method"), scope.get("path"))
            reply = problem_reply(Problem(500, "internal_error", "internal server error"))
        await send_reply(send, reply)
        self._metrics.record(model, self._name, reply.status, time.perf_counter() - started)

    def _abandoned(self) -> Reply:
        """The answer to a request the stopping server gave up on (its shutdown timeout
        ran out): a 503 like any other, where the server would send a bare 500 and log the
        cancellation as a crash of the app. The server cancelled it and awaits nothing
        from it, so the request ends here, answered."""
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()
        self._models.abandoned = True
        message = "the server stopped before this request finished"
        headers = retry_after(self._retry_seconds)
        return problem_reply(Problem(503, "unavailable", message, headers=headers))
