"""One batch each way between the parent and a worker process: the pickle stream goes over
the pipe, the arrays' buffers through shared memory.

Payloads are pickled with protocol 5, so every contiguous numpy array hands its buffer to us
out of band instead of copying it into the stream. When those buffers total
:data:`THRESHOLD` bytes or more, they are placed in one of the worker's two segments (see
``_shm``) and the message carries only the stream and where each buffer lies (a
:class:`_Slice`); smaller payloads carry their buffers in the message, which costs less than
touching shared memory.

- Inputs: the parent copies each buffer into the worker's *request* segment, once; the
  worker's arrays are views of it, no copy.
- Outputs: the worker copies each buffer into its *response* segment, or, for outputs that
  are views of the inputs (``return batch``), only says where they lie in the request
  segment. The parent copies them out, once: both segments are reused by the next batch.

A model that keeps input arrays beyond its batch would see them overwritten by the next
one; the worker notices that their segment is still in use, gives it up to those arrays,
and the parent sends the next batch in a new one. Segments grow to the largest batch seen
and are freed with their worker.
"""

from __future__ import annotations

import mmap
import pickle
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from .._batch import BatchOutcome
from . import _shm
from ._shm import Segment
from ._wire import pack, pack_outcome, unpack, unpack_outcome

#: Out-of-band bytes from which a message's buffers go through shared memory.
THRESHOLD = 64 * 1024
#: Buffers start on cache-line boundaries, which also aligns every numpy dtype.
_ALIGN = 64
_REQUEST, _RESPONSE = 0, 1


@dataclass(frozen=True, slots=True)
class _Slice:
    """Where one out-of-band buffer lies: in which segment, from which byte, how long."""

    segment: int
    offset: int
    length: int


@dataclass(frozen=True, slots=True)
class _Frame:
    """A batch (parent to worker) or its outcome (worker to parent)."""

    stream: bytes
    #: per out-of-band buffer: a _Slice, or the buffer itself (small payloads)
    buffers: tuple[Any, ...]
    #: parent to worker: the request segment to map before reading the slices
    attach: str | None = None
    #: worker to parent: the model kept arrays of the request segment; use a new one
    retained: bool = False


@dataclass(frozen=True, slots=True)
class _NeedResponseSegment:
    """Worker to parent, before its outcome: send me the name of a segment this large."""

    size: int


class Unsendable(Exception):
    """The batch could not be pickled; the exception it raised is ``__cause__``."""


class ParentGone(Exception):
    """The worker's pipe to its parent closed: the parent exited or was killed."""


class ParentChannel:
    """The parent's end of one worker's pipe. It creates and names every segment, and
    removes the names the worker may not have removed (see ``_shm``)."""

    def __init__(self, conn: Connection):
        self.conn = conn
        self._segments: dict[int, Segment] = {}
        self._unconfirmed: list[str] = []  # created, and not yet known to be unlinked

    def exchange(self, items: Sequence[Any], timeout: float | None) -> BatchOutcome:
        """Sends a batch and returns its outcome.

        Raises:
            Unsendable: an item does not pickle; nothing was sent.
            TimeoutError: the worker gave no outcome within ``timeout`` seconds.
            EOFError, OSError: the worker died.
        """
        request = self._segments.get(_REQUEST)
        try:
            stream, buffers = _encode(pack(items), {}, self._reserve_request)
        except Exception as exc:
            raise Unsendable from exc
        new = self._segments.get(_REQUEST)
        attach = new.name if new is not None and new is not request else None
        self._send(_Frame(stream, buffers, attach=attach))
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not self.conn.poll(remaining):
                raise TimeoutError
            message = pickle.loads(self.conn.recv_bytes())
            if not isinstance(message, _NeedResponseSegment):
                break
            segment = self._reserve(_RESPONSE, message.size)
            self._send(None if segment is None else segment.name)
        self._unconfirmed.clear()  # the worker answered: it mapped and unlinked them
        outcome: BatchOutcome = _decode(message, self._segments, copy=True)
        if message.retained:
            self._segments.pop(_REQUEST).close()
        return unpack_outcome(outcome)

    def close(self) -> None:
        """Closes the pipe and unmaps the segments; no name of ours is left behind."""
        for name in self._unconfirmed:
            _shm.unlink(name)
        self._unconfirmed.clear()
        for segment in self._segments.values():
            segment.close()
        self._segments.clear()
        self.conn.close()

    def _reserve_request(self, size: int) -> tuple[int, Segment] | None:
        segment = self._reserve(_REQUEST, size)
        return None if segment is None else (_REQUEST, segment)

    def _reserve(self, which: int, size: int) -> Segment | None:
        """Segment ``which``, replaced by a larger one if it holds less than ``size`` bytes;
        None if there is no shared memory to be had (the message uses the pipe)."""
        current = self._segments.get(which)
        if current is not None and current.size >= size:
            return current
        if not _shm.available():
            return None
        grown = max(size, 2 * current.size if current is not None else 0)
        try:
            segment = Segment.create(-(-grown // mmap.PAGESIZE) * mmap.PAGESIZE)
        except OSError:
            return None  # e.g. /dev/shm is full
        self._unconfirmed.append(segment.name)
        if current is not None:
            current.close()
        self._segments[which] = segment
        return segment

    def _send(self, message: object) -> None:
        self.conn.send_bytes(pickle.dumps(message, protocol=5))


class WorkerChannel:
    """The worker's end of its pipe: it maps the segments the parent names."""

    def __init__(self, conn: Connection):
        self._conn = conn
        self._segments: dict[int, Segment] = {}

    def receive(self) -> _Frame | None:
        """The next batch, or None when the parent asks the worker to stop.

        Raises:
            ParentGone: the pipe closed.
        """
        message: _Frame | None = pickle.loads(self._recv())
        return message

    def answer(self, frame: _Frame, run: Callable[[Sequence[Any]], BatchOutcome]) -> None:
        """Runs ``frame``'s batch with ``run`` and sends its outcome.

        Raises:
            ParentGone: the pipe closed.
        """
        if frame.attach is not None:
            self._replace(_REQUEST, Segment.attach(frame.attach))
        # One expression: the items and the outcome are gone before the in_use() check.
        stream, buffers = _encode(
            pack_outcome(run(unpack(_decode(frame, self._segments, copy=False)))),
            self._segments,
            self._reserve_response,
        )
        request = self._segments.get(_REQUEST)
        retained = request is not None and request.in_use()
        if retained:
            del self._segments[_REQUEST]  # its mapping lives on with the model's arrays
        self._send(_Frame(stream, buffers, retained=retained))

    def _reserve_response(self, size: int) -> tuple[int, Segment] | None:
        current = self._segments.get(_RESPONSE)
        if current is None or current.size < size:
            if not _shm.available():
                return None
            self._send(_NeedResponseSegment(size))
            name: str | None = pickle.loads(self._recv())
            if name is None:
                return None
            current = self._replace(_RESPONSE, Segment.attach(name))
        return _RESPONSE, current

    def _replace(self, which: int, segment: Segment) -> Segment:
        old = self._segments.get(which)
        if old is not None:
            old.close()
        self._segments[which] = segment
        return segment

    def _send(self, message: object) -> None:
        try:
            self._conn.send_bytes(pickle.dumps(message, protocol=5))
        except OSError as exc:
            raise ParentGone from exc

    def _recv(self) -> bytes:
        try:
            return self._conn.recv_bytes()
        except (EOFError, OSError) as exc:
            raise ParentGone from exc


def _encode(
    payload: Any,
    segments: dict[int, Segment],
    reserve: Callable[[int], tuple[int, Segment] | None],
) -> tuple[bytes, tuple[Any, ...]]:
    """``payload``'s pickle stream and its buffers: slices of ``segments`` for buffers that
    already lie in one, then either slices of the segment ``reserve(size)`` gives (once
    there are THRESHOLD bytes to place) or the buffers themselves."""
    pickled: list[pickle.PickleBuffer] = []
    stream = pickle.dumps(payload, protocol=5, buffer_callback=pickled.append)
    buffers: list[Any] = []
    to_place: list[tuple[int, memoryview]] = []
    for index, buffer in enumerate(pickled):
        raw = buffer.raw()
        where = _find(raw, segments)
        if where is None:
            to_place.append((index, raw))
        buffers.append(buffer if where is None else where)
    offsets, total = _layout([raw.nbytes for _, raw in to_place])
    if to_place and total >= THRESHOLD and (reserved := reserve(total)) is not None:
        which, segment = reserved
        for (index, raw), offset in zip(to_place, offsets, strict=True):
            # numpy copies without holding the GIL: the event loop runs on meanwhile.
            np.copyto(segment.array[offset : offset + raw.nbytes], np.frombuffer(raw, np.uint8))
            buffers[index] = _Slice(which, offset, raw.nbytes)
    return stream, tuple(buffers)


def _find(raw: memoryview, segments: dict[int, Segment]) -> _Slice | None:
    if not raw.nbytes:
        return None
    for which, segment in segments.items():
        offset = segment.offset_of(raw)
        if offset is not None:
            return _Slice(which, offset, raw.nbytes)
    return None


def _layout(sizes: Sequence[int]) -> tuple[list[int], int]:
    """Aligned offsets for buffers of ``sizes``, and the bytes they span."""
    offsets, end = [], 0
    for size in sizes:
        offsets.append(end)
        end += -(-size // _ALIGN) * _ALIGN
    return offsets, end


def _decode(frame: _Frame, segments: dict[int, Segment], *, copy: bool) -> Any:
    """Unpickles ``frame``; its arrays are views of the segments, or copies with ``copy``."""
    return pickle.loads(frame.stream, buffers=[_resolve(b, segments, copy) for b in frame.buffers])


def _resolve(buffer: Any, segments: dict[int, Segment], copy: bool) -> Any:
    if not isinstance(buffer, _Slice):
        return buffer
    view = segments[buffer.segment].array[buffer.offset : buffer.offset + buffer.length]
    return np.copy(view) if copy else view
