"""The event loop's end of a worker process's pipe: whole messages in, whole messages out.

The worker reads and writes its end with :class:`multiprocessing.connection.Connection`, so
messages are framed as it frames them: a 4-byte big-endian length (or -1, then an 8-byte
one) before each. On the loop the pipe is an asyncio transport: writes never block (what
the pipe cannot take yet waits in the transport's buffer) and reads arrive as callbacks, so
a batch reaches its worker, and its outcome the caller, with no thread in between.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import cast

_SHORT = struct.Struct("!i")
#: The read buffer's size, grown for a longer message while it arrives.
_CHUNK = 256 * 1024
_LONG = struct.Struct("!Q")


class Link(asyncio.BufferedProtocol):
    """Frames messages both ways over one pipe; ``on_message`` gets each whole message, and
    ``on_lost`` is called once, when the pipe closes (the worker exited or was killed, or
    :meth:`close` was called).

    Reads go into one reused buffer (a buffered protocol): reading into a fresh 256 KB
    bytes object per message, as a plain protocol does, costs more than the rest of a
    message's handling.
    """

    def __init__(self, on_message: Callable[[bytes], None], on_lost: Callable[[], None]):
        self._on_message = on_message
        self._on_lost = on_lost
        self._buffer = bytearray(_CHUNK)
        self._start = 0  # the unread bytes are _buffer[_start:_end]
        self._end = 0
        self._transport: asyncio.Transport | None = None

    @classmethod
    async def open(
        cls, conn: Connection, on_message: Callable[[bytes], None], on_lost: Callable[[], None]
    ) -> Link:
        """A link over ``conn``'s pipe, which it takes over (``conn`` is closed)."""
        sock = socket.socket(fileno=os.dup(conn.fileno()))
        conn.close()
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        _, link = await loop.connect_accepted_socket(lambda: cls(on_message, on_lost), sock)
        return link

    def send(self, message: bytes) -> None:
        """Queues ``message``; dropped if the pipe is closed (``on_lost`` says so)."""
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        size = len(message)
        if size > 0x7FFFFFFF:
            transport.write(_SHORT.pack(-1) + _LONG.pack(size))
            transport.write(message)
        elif size > 16384:  # no concatenation copy for large messages
            transport.write(_SHORT.pack(size))
            transport.write(message)
        else:
            transport.write(_SHORT.pack(size) + message)

    def close(self) -> None:
        """Closes the pipe at once, unsent messages included; ``on_lost`` follows."""
        if self._transport is not None:
            self._transport.abort()

    def _closed(self) -> bool:
        return self._transport is None or self._transport.is_closing()

    def _frame(self) -> tuple[int, int] | None:
        """Where the first unread message lies in the buffer, or None if it is not all
        there yet; makes room for it when the buffer cannot hold it from where it starts."""
        start, end, buffer = self._start, self._end, self._buffer
        header, size = 4, None
        if end - start >= 4:
            size = _SHORT.unpack_from(buffer, start)[0]
            if size == -1:  # a long message: its length follows in 8 bytes
                header = 12
                size = _LONG.unpack_from(buffer, start + 4)[0] if end - start >= 12 else None
        if size is not None and end - start >= header + size:
            return start + header, start + header + size
        needed = header + (size or 8)
        if start + needed > len(buffer):  # move the unread bytes to a buffer that fits it
            # The transport may still hold a view of the old buffer: never resize it.
            grown = bytearray(max(_CHUNK, needed))
            grown[: end - start] = buffer[start:end]
            self._buffer, self._start, self._end = grown, 0, end - start
        return None

    # -- asyncio.BufferedProtocol -----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Not isinstance: uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)

    def get_buffer(self, sizehint: int) -> memoryview:
        return memoryview(self._buffer)[self._end :]

    def buffer_updated(self, nbytes: int) -> None:
        self._end += nbytes
        while not self._closed() and (frame := self._frame()) is not None:
            start, stop = frame
            with memoryview(self._buffer) as view:
                message = bytes(view[start:stop])
            self._start = stop
            if self._start == self._end:  # all read: start again from the top
                self._start = self._end = 0
                if len(self._buffer) > _CHUNK:
                    self._buffer = bytearray(_CHUNK)
            self._on_message(message)

    def eof_received(self) -> bool:
        return False  # the worker closed its end: close ours

    def connection_lost(self, exc: Exception | None) -> None:
        self._on_lost()
