"""Running an app on uvicorn (httptools, and uvloop where the CLI starts the loop).

:func:`serving` runs the server in the current event loop for the length of an ``async
with`` block; :func:`serve` runs it until SIGTERM or SIGINT. Either way, stopping is
graceful: the listening socket closes first, requests in flight get up to
``shutdown_timeout`` seconds to finish, then the models drain and close.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from types import FrameType
from typing import Any, cast

import uvicorn

#: Seconds in-flight requests get to finish once the server is asked to stop.
DEFAULT_SHUTDOWN_TIMEOUT = 30.0
#: Connections (and requests) served at once; uvicorn answers 503 beyond this.
DEFAULT_MAX_CONNECTIONS = 4096


class _Uvicorn(uvicorn.Server):
    """uvicorn's server, signalling when it listens, and owning signals only if asked."""

    def __init__(self, config: uvicorn.Config, *, handle_signals: bool):
        super().__init__(config)
        self.listening = asyncio.Event()
        self._handle_signals = handle_signals

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self.listening.set()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if not self._handle_signals:
            yield
            return
        with super().capture_signals():
            yield

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        note_stopping = getattr(self.config.app, "note_server_stopping", None)
        if callable(note_stopping):  # a ServingApp, which answers what is cancelled with 503
            note_stopping()
        await super().shutdown(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Unlike uvicorn, not re-raised once stopped: a SIGTERM'd server exits 0.
        if self.should_exit:
            self.force_exit = True
        self.should_exit = True


@dataclass(frozen=True)
class RunningServer:
    """A server started by :func:`serving`."""

    host: str
    port: int
    _server: _Uvicorn
    _task: asyncio.Task[None]

    @property
    def url(self) -> str:
        """``http://host:port``, with the port actually bound."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def stop(self) -> None:
        """Asks the server to stop gracefully (as SIGTERM does); see :meth:`wait_stopped`."""
        self._server.should_exit = True

    async def wait_stopped(self) -> None:
        """Returns once the server has stopped (after :meth:`stop`, or a signal)."""
        await asyncio.wait((self._task,))


@contextlib.asynccontextmanager
async def serving(
    app: Any,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    access_log: bool = False,
    proxy_headers: bool = False,
    handle_signals: bool = False,
) -> AsyncIterator[RunningServer]:
    """Serves the ASGI ``app`` from this event loop while the block runs.

    Returns (enters the block) once the socket listens; the app's lifespan has started by
    then, and models load in the background (await ``app.wait_ready()``). Leaving the block
    stops the server gracefully.

    Args:
        app: an ASGI app, e.g. from :func:`create_app`.
        host: the address to listen on.
        port: the port; 0 picks a free one (see :attr:`RunningServer.port`).
        shutdown_timeout: seconds in-flight requests get to finish when stopping (those
            still running then are answered 503).
        max_connections: connections open at once (idle keep-alive ones count); while more
            are open, or as many requests are in progress, uvicorn answers new requests
            with a plain-text 503.
        access_log: log each request (uvicorn's access log).
        proxy_headers: take the client's address and scheme from ``X-Forwarded-For`` and
            ``X-Forwarded-Proto`` when a proxy on 127.0.0.1 sends them (off by default: it
            costs time on every request, and asyncml's endpoints do not use them).
        handle_signals: stop on SIGTERM and SIGINT (main thread only).

    Raises:
        OSError: the address cannot be bound.
        RuntimeError: the app's lifespan failed to start.
        ValueError: ``shutdown_timeout`` below 0 or ``max_connections`` below 1.
    """
    if not shutdown_timeout >= 0:
        raise ValueError(f"shutdown_timeout must be >= 0 seconds, got {shutdown_timeout!r}")
    if max_connections < 1:
        raise ValueError(f"max_connections must be >= 1, got {max_connections!r}")
    listener = socket.create_server((host, port), family=_family(host), backlog=2048)
    config = uvicorn.Config(
        app,
        loop="none",
        http="httptools",
        lifespan="on",
        access_log=access_log,
        log_config=None,
        # uvicorn's type says int, but it only ever waits that long: fractions work.
        timeout_graceful_shutdown=cast(int, shutdown_timeout),
        # uvicorn refuses a request once this many connections are open, its own included.
        limit_concurrency=max_connections + 1,
        # Per request, each costs more than a cheap model's whole batch share: the proxy
        # headers middleware parses the client address and scans the headers, and the
        # Server header is one more to validate and write.
        proxy_headers=proxy_headers,
        server_header=False,
    )
    server = _Uvicorn(config, handle_signals=handle_signals)

    failures: list[BaseException] = []

    async def run() -> None:
        try:
            await server.serve(sockets=[listener])
        except SystemExit:  # how uvicorn reports a lifespan that failed to start
            failures.append(RuntimeError("the app failed to start (see its log)"))
        except Exception as error:  # raised below, as itself rather than in a group
            failures.append(error)
        finally:
            listener.close()
            server.listening.set()  # also when it ended early, so the waiter below wakes

    async with asyncio.TaskGroup() as group:
        task = group.create_task(run())
        await server.listening.wait()
        if not task.done():
            try:
                yield RunningServer(host, listener.getsockname()[1], server, task)
            finally:
                server.should_exit = True
    if failures:
        raise failures[0]


async def serve(
    app: Any,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    access_log: bool = False,
    proxy_headers: bool = False,
) -> None:
    """Serves ``app`` until SIGTERM or SIGINT, then stops gracefully and returns.

    See :func:`serving` for the arguments and errors.
    """
    async with serving(
        app,
        host=host,
        port=port,
        shutdown_timeout=shutdown_timeout,
        max_connections=max_connections,
        access_log=access_log,
        proxy_headers=proxy_headers,
        handle_signals=True,
    ) as server:
        await server.wait_stopped()


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET
