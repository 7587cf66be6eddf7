"""The HTTP fetch stage: one shared aiohttp session, a connection limit, timeouts, retries.

Connection errors, timeouts, 5xx and 429 answers are worth retrying (a 429 or 503's
``Retry-After`` sets the least delay); other 4xx answers are the item's own fault and fail
it at once.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, Literal

from ._rate import RateLimit
from ._retry import Retry
from ._stage import Stage, stage

Read = Literal["bytes", "text", "json"]


class HTTPStatusError(Exception):
    """The server answered with an error status.

    Attributes:
        status: the HTTP status code.
        url: the requested URL.
        retry_after: seconds the server asked to wait (``Retry-After``), if it did.
    """

    def __init__(self, status: int, url: str, retry_after: float | None = None):
        super().__init__(f"HTTP {status} from {url}")
        self.status = status
        self.url = url
        self.retry_after = retry_after

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.status, self.url, self.retry_after))


class RetryableStatus(HTTPStatusError):
    """A 5xx or 429 answer: the server may well succeed next time."""


class Fetch:
    """An async function of an item that GETs (or sends) a URL; a pipeline enters it for
    the run, which opens one session for all items.

    Args:
        url: the item's URL (default: the item is the URL).
        method: the HTTP method.
        body: the request's JSON body for an item (default: none).
        headers: headers for every request.
        read: how to return the answer: ``"bytes"``, ``"text"`` or ``"json"``.
        limit: open connections at most (aiohttp's connector limit).
        timeout: seconds per request, connecting and reading included.
    """

    def __init__(
        self,
        url: Callable[[Any], str] | None = None,
        *,
        method: str = "GET",
        body: Callable[[Any], Any] | None = None,
        headers: Mapping[str, str] | None = None,
        read: Read = "bytes",
        limit: int = 100,
        timeout: float = 30.0,
    ):
        if read not in ("bytes", "text", "json"):
            raise ValueError(f"read must be 'bytes', 'text' or 'json', not {read!r}")
        self._url = url
        self._method = method
        self._body = body
        self._headers = dict(headers or {})
        self._read = read
        self._limit = limit
        self._timeout = timeout
        self._session: Any = None
        self.__name__ = "fetch"

    async def __aenter__(self) -> Fetch:
        import aiohttp

        if self._session is not None:
            raise RuntimeError("this fetch stage is already in use by a running pipeline")
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self._limit),
            timeout=aiohttp.ClientTimeout(total=self._timeout),
            headers=self._headers,
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def __call__(self, item: Any) -> Any:
        if self._session is None:
            raise RuntimeError("a fetch stage runs inside a pipeline (or 'async with' it)")
        url = self._url(item) if self._url is not None else item
        json = self._body(item) if self._body is not None else None
        async with self._session.request(self._method, url, json=json) as response:
            status = response.status
            if status >= 400:
                kind = RetryableStatus if status >= 500 or status == 429 else HTTPStatusError
                raise kind(status, str(url), _retry_after(response.headers.get("Retry-After")))
            if self._read == "json":
                return await response.json(content_type=None)
            if self._read == "text":
                return await response.text()
            return await response.read()


def _retry_after(value: str | None) -> float | None:
    """``Retry-After`` in seconds: a number of seconds or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())  # an HTTP date is wall-clock time


def transient_errors() -> tuple[type[BaseException], ...]:
    """What a fetch retries by default: connection trouble, timeouts, 5xx and 429."""
    import aiohttp

    return (
        RetryableStatus,
        aiohttp.ClientConnectionError,
        aiohttp.ClientPayloadError,
        TimeoutError,
    )


def fetch(
    url: Callable[[Any], str] | None = None,
    *,
    method: str = "GET",
    body: Callable[[Any], Any] | None = None,
    headers: Mapping[str, str] | None = None,
    read: Read = "bytes",
    concurrency: int = 100,
    timeout: float = 30.0,
    retry: Retry | int = 4,
    rate: RateLimit | float | None = None,
    name: str = "fetch",
    queue: int | None = None,
) -> Stage:
    """A stage that fetches each item's URL with aiohttp.

    ::

        Pipeline(fetch(lambda row: f"{BASE}/{row['id']}", read="json", rate=50), ...)

    Args:
        url, method, body, headers, read, timeout: see :class:`Fetch`.
        concurrency: requests in flight at once; also the connection limit.
        retry: a :class:`Retry`, or a number of attempts with exponential backoff from
            0.2 s; either way only transient errors are retried unless the policy says
            otherwise.
        rate: at most this many requests per second.
        name: the stage's name.
        queue: the stage's input queue capacity.
    """
    if isinstance(retry, int):
        retry = Retry(attempts=retry, backoff=0.2, on=transient_errors())
    client = Fetch(
        url,
        method=method,
        body=body,
        headers=headers,
        read=read,
        limit=concurrency,
        timeout=timeout,
    )
    return stage(client, name=name, concurrency=concurrency, retry=retry, rate=rate, queue=queue)
