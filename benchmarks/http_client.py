"""A lean HTTP/1.1 client for the load generator: keep-alive connections that send
pre-encoded requests and parse answers with httptools (the C parser uvicorn uses).

On two cores the load generator shares the machine with the server it measures, so every
microsecond it spends per request is taken from the server: aiohttp's client cost about
300 us of CPU per request here, this one a fraction of that. It knows only what the
benchmarks need: ``POST`` of a body, status and body back, ``Content-Length`` or chunked
answers, a server that closes the connection.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import cast
from urllib.parse import urlsplit

import httptools


class RequestFailed(Exception):
    """The connection failed or closed before a whole answer came back."""


class _Connection(asyncio.Protocol):
    """One keep-alive connection, one request at a time."""

    def __init__(self) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self._answer: asyncio.Future[tuple[int, bytes]] | None = None
        self._chunks: list[bytes] = []
        self.reusable = True
        #: Answers read whole so far, and whether any byte of the awaited one arrived.
        self.answered = 0
        self.replying = False

    # -- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.replying = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as error:
            self._fail(RequestFailed(f"malformed answer: {error}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.reusable = False
        self._transport = None
        self._fail(RequestFailed(f"connection closed: {exc}"))

    # -- httptools callbacks --------------------------------------------------------------

    def on_body(self, body: bytes) -> None:
        self._chunks.append(body)

    def on_message_complete(self) -> None:
        if not self._parser.should_keep_alive():
            self.reusable = False
        answer, self._answer = self._answer, None
        self.answered += 1
        self.replying = False
        body = b"".join(self._chunks)
        self._chunks.clear()
        if answer is not None and not answer.done():
            answer.set_result((self._parser.get_status_code(), body))

    # -- use ------------------------------------------------------------------------------

    def request(self, message: bytes) -> asyncio.Future[tuple[int, bytes]]:
        if self._transport is None:
            raise RequestFailed("connection closed")
        self._answer = asyncio.get_running_loop().create_future()
        self._transport.write(message)
        return self._answer

    def close(self) -> None:
        self.reusable = False
        if self._transport is not None:
            self._transport.close()

    def _fail(self, error: RequestFailed) -> None:
        self.reusable = False
        answer, self._answer = self._answer, None
        if answer is not None and not answer.done():
            answer.set_exception(error)
        if self._transport is not None:
            self._transport.close()


class Client:
    """Up to ``limit`` keep-alive connections to one server; callers beyond it wait for
    one to be free (first come, first served)."""

    def __init__(self, url: str, limit: int):
        parts = urlsplit(url)
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or 80
        self._path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._limit = limit
        self._open = 0
        #: Connections opened so far.
        self.opened = 0
        self._idle: list[_Connection] = []
        self._waiters: deque[asyncio.Future[_Connection | None]] = deque()

    def post_message(self, body: bytes) -> bytes:
        """The whole request that POSTs ``body`` (JSON): encode it once, send it many times."""
        head = (
            f"POST {self._path} HTTP/1.1\r\nHost: {self._host}:{self._port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        return head.encode("latin-1") + body

    async def send(self, message: bytes) -> tuple[int, bytes]:
        """Sends one request made by :meth:`post_message`; returns status and body.

        A kept-alive connection that the server closes as the request goes out (its idle
        timeout) fails before answering anything; the request is then sent once more, on
        another connection, as browsers do.

        Raises:
            RequestFailed, OSError: the connection failed.
        """
        while True:
            connection = await self._acquire()
            try:
                status, body = await connection.request(message)
            except RequestFailed:
                stale = connection.answered > 0 and not connection.replying
                connection.close()
                self._release(connection)
                if stale:
                    continue
                raise
            except BaseException:
                connection.close()
                self._release(connection)
                raise
            self._release(connection)
            return status, body

    async def _acquire(self) -> _Connection:
        while self._idle:
            connection = self._idle.pop()
            if connection.reusable:
                return connection
            self._open -= 1  # the server closed it while it was idle
        if self._open < self._limit:
            self._open += 1
            try:
                loop = asyncio.get_running_loop()
                _, connection = await loop.create_connection(_Connection, self._host, self._port)
                self.opened += 1
            except BaseException:
                self._open -= 1
                self._hand_over(None)
                raise
            return connection
        waiter: asyncio.Future[_Connection | None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            handed = await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self._release(waiter.result())  # handed over as we were cancelled: pass it on
            raise
        return handed if handed is not None else await self._acquire()

    def _release(self, connection: _Connection | None) -> None:
        if connection is not None and not connection.reusable:
            connection.close()
            self._open -= 1
            connection = None  # its place is free: a waiter opens a new one
        if connection is not None and not self._waiters:
            self._idle.append(connection)
        else:
            self._hand_over(connection)

    def _hand_over(self, connection: _Connection | None) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(connection)
                return
        if connection is not None:
            self._idle.append(connection)

    def close(self) -> None:
        """Closes the idle connections (those in use close as their requests end)."""
        for connection in self._idle:
            connection.close()
        self._idle.clear()
