"""The fetch stage against a real aiohttp server on 127.0.0.1 that fails some requests."""

from __future__ import annotations

import asyncio
import socket
from collections import Counter

from aiohttp import web

from asyncml.pipeline import DeadLetter, Pipeline, Retry, fetch, stage
from asyncml.pipeline._fetch import _retry_after, transient_errors


class FlakyServer:
    """Item ``n``: the first request fails with 500 when ``n % 5 == 0``, with 429 and a
    ``Retry-After`` when ``n % 5 == 1``; ``/item/13`` is always 404; others answer JSON."""

    def __init__(self) -> None:
        self.requests: Counter[int] = Counter()
        self.times: dict[int, list[float]] = {}
        self.open_now = 0
        self.most_open = 0

    async def handle(self, request: web.Request) -> web.Response:
        n = int(request.match_info["n"])
        self.requests[n] += 1
        self.times.setdefault(n, []).append(asyncio.get_running_loop().time())
        self.open_now += 1
        self.most_open = max(self.most_open, self.open_now)
        try:
            await asyncio.sleep(0)
            if n == 13:
                return web.json_response({"error": "no such item"}, status=404)
            if self.requests[n] == 1 and n % 5 == 0:
                return web.json_response({"error": "oops"}, status=500)
            if self.requests[n] == 1 and n % 5 == 1:
                return web.Response(status=429, headers={"Retry-After": "0.2"})
            return web.json_response({"n": n})
        finally:
            self.open_now -= 1


async def serve(flaky: FlakyServer) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_get("/item/{n}", flaky.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}"


async def test_fetch_retries_5xx_and_429_and_fails_other_errors_at_once() -> None:
    flaky = FlakyServer()
    runner, base = await serve(flaky)
    try:
        letters: list[DeadLetter] = []
        pipeline = Pipeline(
            fetch(
                lambda n: f"{base}/item/{n}",
                read="json",
                concurrency=4,
                retry=Retry(attempts=3, backoff=0.01, on=transient_errors()),
            ),
            stage(lambda answer: answer["n"], executor="inline", name="unwrap"),
        )
        async with pipeline.stream(range(30), dead_letters=letters.append) as outputs:
            got = [output async for output in outputs]
    finally:
        await runner.cleanup()
    assert got == [n for n in range(30) if n != 13]
    assert [(letter.index, letter.error_type, letter.attempts) for letter in letters] == [
        (13, "HTTPStatusError", 1)
    ]
    assert "HTTP 404" in letters[0].message
    for n in range(30):
        expected = 1 if n == 13 or n % 5 > 1 else 2
        assert flaky.requests[n] == expected, n
    first, second = flaky.times[11]
    assert second - first >= 0.2  # the server's Retry-After, not the 10 ms backoff
    assert flaky.most_open <= 4


async def test_a_request_that_keeps_failing_ends_in_the_dead_letters() -> None:
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    letters: list[DeadLetter] = []
    dead = fetch(lambda n: f"http://127.0.0.1:{port}/item/{n}", retry=Retry(2, backoff=0.0))
    summary = await Pipeline(dead).run(range(2), dead_letters=letters.append)
    assert summary.failed == 2
    assert {letter.attempts for letter in letters} == {2}
    assert all("Connect" in letter.error_type for letter in letters)


def test_retry_after_accepts_seconds_and_http_dates() -> None:
    assert _retry_after("3") == 3.0
    assert _retry_after(None) is None
    assert _retry_after("soon") is None
    assert _retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past
