"""The ASGI edge: reading a bounded request body, parsing JSON, sending one response.

Bodies are read as they arrive and refused with 413 as soon as they pass the limit (or at
once, when ``Content-Length`` already says so), so an oversized upload is never held in
memory. Large bodies are parsed in a thread, so that the event loop never spends
milliseconds on one request.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from ._problems import ClientGone, Headers, Problem

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

JSON = b"application/json"
#: Bodies at least this large are parsed (and their replies encoded) in a thread.
OFF_LOOP_BYTES = 1 << 20


@dataclass(slots=True)
class Reply:
    """A complete response: status, body and headers (content type included)."""

    status: int
    body: bytes
    content_type: bytes = JSON
    headers: Headers = field(default_factory=list)


def request_headers(scope: Scope) -> dict[bytes, bytes]:
    """The request's headers by (lower-case) name; of a repeated header, the last."""
    return dict(scope["headers"])


def media_type(headers: Mapping[bytes, bytes]) -> bytes | None:
    """The request's content type without parameters, lower case; ``None`` if absent."""
    value = headers.get(b"content-type")
    if value is None:
        return None
    return value.split(b";", 1)[0].strip().lower()


def require_json(headers: Mapping[bytes, bytes]) -> None:
    """Accepts JSON bodies, or bodies sent without a content type.

    Raises:
        Problem: 415 for any other content type.
    """
    kind = media_type(headers)
    if kind is None or kind == JSON or kind.endswith(b"+json"):
        return
    raise Problem(
        415,
        "unsupported_media_type",
        f"content type {kind.decode('latin-1')!r} is not supported: send application/json",
    )


async def read_body(headers: Mapping[bytes, bytes], receive: Receive, limit: int) -> bytes:
    """The whole request body, refusing it once it exceeds ``limit`` bytes.

    Raises:
        Problem: 413 (with ``Connection: close``: the rest of the body is never read), or
            400 for a malformed ``Content-Length``.
        ClientGone: the client disconnected first.
    """
    declared = headers.get(b"content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise Problem(400, "bad_request", "Content-Length is not a number") from None
        if size > limit:
            raise _too_large(limit)
    chunks: list[bytes] = []
    received = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk: bytes = message.get("body", b"")
        if chunk:
            received += len(chunk)
            if received > limit:
                raise _too_large(limit)
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _too_large(limit: int) -> Problem:
    return Problem(
        413,
        "body_too_large",
        f"the request body exceeds the limit of {limit:,} bytes",
        headers=[(b"connection", b"close")],
    )


def parse_json(body: bytes) -> Any:
    """The JSON document in ``body`` (UTF-8).

    Raises:
        Problem: 400 for an empty body, invalid UTF-8 or invalid JSON.
    """
    if not body:
        raise Problem(400, "invalid_json", "the request body is empty: expected a JSON object")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise Problem(400, "invalid_json", f"the request body is not valid JSON: {error}") from None


def is_large(body: bytes) -> bool:
    """Whether parsing ``body`` (or encoding its reply) would stall the event loop long
    enough to be worth a thread hop (which costs more than a small parse)."""
    return len(body) >= OFF_LOOP_BYTES


async def off_loop(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` in a thread (for a large body: see :func:`is_large`)."""
    return await asyncio.to_thread(fn, *args)


async def send_reply(send: Send, reply: Reply) -> None:
    """Sends ``reply`` as one complete response."""
    headers = [(b"content-type", reply.content_type), (b"content-length", b"%d" % len(reply.body))]
    if reply.headers:
        headers += reply.headers
    await send({"type": "http.response.start", "status": reply.status, "headers": headers})
    await send({"type": "http.response.body", "body": reply.body})


def json_reply(payload: Any, status: int = 200, headers: Headers | None = None) -> Reply:
    """A JSON reply (numpy arrays and scalars serialised as lists and numbers).

    Raises:
        Problem: 500 if ``payload`` holds something JSON cannot express.
    """
    return Reply(status, dump_json(payload), JSON, headers or [])


def dump_json(payload: Any) -> bytes:
    """``payload`` as JSON bytes; objects with ``tolist()`` (arrays, tensors) become lists.

    Raises:
        Problem: 500 if ``payload`` holds something JSON cannot express.
    """
    try:
        return orjson.dumps(payload, default=_to_json, option=orjson.OPT_SERIALIZE_NUMPY)
    except TypeError as error:
        raise Problem(
            500, "bad_output", f"the model's output is not JSON-serialisable: {error}"
        ) from None


def _to_json(value: Any) -> Any:
    tolist = getattr(value, "tolist", None)
    if tolist is not None:
        return tolist()
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def problem_reply(problem: Problem) -> Reply:
    """The error response for ``problem``."""
    return Reply(problem.status, problem.body(), JSON, problem.headers)
