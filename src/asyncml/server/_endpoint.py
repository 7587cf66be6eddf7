"""One ASGI endpoint: runs its handler, answers once, and counts the answer."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from ._http import Receive, Reply, Scope, Send, problem_reply, send_reply
from ._metrics import CLIENT_GONE, RequestMetrics
from ._models import Models
from ._problems import ClientGone, Problem

Handler = Callable[[Scope, Receive], Awaitable[Reply]]

logger = logging.getLogger("asyncml.server")

#: The ``model`` label of requests that name no served model.
NO_MODEL = "-"


class Endpoint:
    """An ASGI app around ``handler``: a :class:`Problem` becomes its error response, an
    unexpected exception a bare 500 (logged, never shown to the client), and every request
    is recorded in ``metrics`` under ``name``."""

    def __init__(self, name: str, handler: Handler, models: Models, metrics: RequestMetrics):
        self._name = name
        self._handler = handler
        self._models = models
        self._metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        model = scope.get("path_params", {}).get("name", NO_MODEL)
        if model not in self._models:
            model = NO_MODEL  # unknown names would make unbounded label sets
        try:
            reply = await self._handler(scope, receive)
        except Problem as problem:
            reply = problem_reply(problem)
        except ClientGone:
            self._metrics.record(model, self._name, CLIENT_GONE, loop.time() - started)
            return
        except Exception:
            logger.exception("%s %s failed", scope.get("method"), scope.get("path"))
            reply = problem_reply(Problem(500, "internal_error", "internal server error"))
        await send_reply(send, reply)
        self._metrics.record(model, self._name, reply.status, loop.time() - started)
