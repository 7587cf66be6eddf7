"""The benchmarks' HTTP client: keep-alive reuse, a server that closes, chunked answers."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import pytest

import asyncml
import asyncml.server

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
from http_client import Client, RequestFailed


def double(batch: list[Any]) -> list[Any]:
    return [2 * x for x in batch]


async def test_concurrent_requests_share_the_connections_the_limit_allows() -> None:
    app = asyncml.server.create_app([asyncml.load(double)], max_body_size=1_000)
    async with asyncml.server.serving(app, port=0, shutdown_timeout=5) as server:
        await app.wait_ready()
        client = Client(f"{server.url}/v1/models/double/predict", limit=4)
        try:
            answers = await asyncio.gather(
                *(client.send(client.post_message(b'{"input": %d}' % i)) for i in range(50))
            )
            assert answers == [(200, b'{"output":%d}' % (2 * i)) for i in range(50)]
            assert client.opened == 4

            # 413 comes with "Connection: close": that connection is dropped, a new one opened.
            status, _ = await client.send(client.post_message(b"[" + b"1," * 1_000 + b"1]"))
            assert status == 413
            answers = await asyncio.gather(
                *(client.send(client.post_message(b'{"input": %d}' % i)) for i in range(50))
            )
            assert answers == [(200, b'{"output":%d}' % (2 * i)) for i in range(50)]
            assert client.opened == 5
        finally:
            client.close()


async def test_chunked_answers_are_read_whole_and_a_request_the_server_closes_on_fails() -> None:
    connections = 0

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        try:
            await reader.readuntil(b"\r\n\r\n")
            await reader.readexactly(2)  # the body: b"{}"
            if connections == 1:
                writer.write(
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                    b"3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n"
                )
                await reader.readuntil(b"\r\n\r\n")  # the next request: closed unanswered
        finally:
            writer.close()
            await writer.wait_closed()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = Client(f"http://127.0.0.1:{port}/", limit=1)
    try:
        assert await client.send(client.post_message(b"{}")) == (200, b"abcdefg")
        # Closed on a kept-alive connection: sent again on a new one, which closes too.
        with pytest.raises(RequestFailed, match="closed"):
            await client.send(client.post_message(b"{}"))
        assert (connections, client.opened) == (2, 2)
    finally:
        client.close()
        server.close()
        await server.wait_closed()
