"""The event loop's end of a worker's pipe (``executors/_link.py``) against the blocking
``multiprocessing`` end a worker uses: every message whole, in order, whatever its size."""

from __future__ import annotations

import asyncio
import threading
from multiprocessing import Pipe
from multiprocessing.connection import Connection

from asyncml.executors._link import Link

#: Around every boundary the framing has: empty, one byte, the header concatenated or not,
#: larger than the read buffer (256 KB), and larger than the pipe's buffer many times over.
SIZES = [0, 1, 3, 4, 5, 16_384, 16_385, 262_143, 262_144, 262_145, 3_000_000, 7, 0, 2]


def payload(size: int, seed: int) -> bytes:
    return bytes((seed + i) % 251 for i in range(min(size, 251))) * (size // 251 + 1)


def echo(conn: Connection) -> None:
    """The worker's side: answers each message with itself, reversed, until the pipe closes."""
    try:
        while True:
            conn.send_bytes(conn.recv_bytes()[::-1])
    except EOFError:
        conn.close()


async def test_messages_of_every_size_cross_whole_and_in_order_both_ways() -> None:
    ours, theirs = Pipe()
    worker = threading.Thread(target=echo, args=(theirs,))
    worker.start()
    sent = [payload(size, seed)[:size] for seed, size in enumerate(SIZES)]
    received: list[bytes] = []
    answered, lost = asyncio.Event(), asyncio.Event()

    def on_message(message: bytes) -> None:
        received.append(message)
        if len(received) == len(sent):
            answered.set()

    link = await Link.open(ours, on_message, lost.set)
    for message in sent:  # all at once: the writes queue, the reads arrive in any chunks
        link.send(message)
    async with asyncio.timeout(30):
        await answered.wait()
    assert received == [message[::-1] for message in sent]
    link.close()
    await lost.wait()
    await asyncio.to_thread(worker.join)  # the worker saw end-of-file: the pipe is closed


async def test_the_other_end_closing_is_reported_once() -> None:
    ours, theirs = Pipe()
    calls: list[str] = []
    lost = asyncio.Event()

    def on_lost() -> None:
        calls.append("lost")
        lost.set()

    link = await Link.open(ours, lambda message: calls.append("message"), on_lost)
    theirs.send_bytes(b"last words")
    theirs.close()
    await lost.wait()
    link.close()  # closing again changes nothing
    link.send(b"to nobody")  # dropped: the pipe is gone
    await asyncio.sleep(0)
    assert calls == ["message", "lost"]
