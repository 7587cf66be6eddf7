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

A worker holds up to :data:`SLOTS` batches: the one it runs and the next, sent ahead so
that the parent's copy of it overlaps the run (see ``_process``). Each slot has its own pair
of segments, and the parent reuses a slot only once it has copied its outcome out.

A model that keeps input arrays beyond its batch would see them overwritten by a later
one; the worker notices that their segment is still in use, gives it up to those arrays,
and the parent sends the slot's next batch in a new one. Segments grow to the largest batch
seen and are freed with their worker.

Arrays made with :func:`~asyncml.shared_array` are in shared memory already (see
``_shared``): they cross as a :class:`~._shared.SharedSlice` both ways, with no copy at all,
when the worker can open its parent's files (it says so when it is ready).
"""

from __future__ import annotations

import mmap
import pickle
from collections import deque
from collections.abc import Callable, Sequence
from functools import partial
from multiprocessing.connection import Connection
from typing import Any, NamedTuple

import numpy as np

from .._batch import BatchOutcome
from .._errors import ModelError
from . import _shm
from ._shared import REGISTRY, SharedMaps, SharedSlice, view_in_parent
from ._shm import Segment
from ._wire import pack, pack_outcome, unpack, unpack_outcome

#: Out-of-band bytes from which a message's buffers go through shared memory.
THRESHOLD = 64 * 1024
#: Buffers start on cache-line boundaries, which also aligns every numpy dtype.
_ALIGN = 64
#: Stands for a buffer copied out of shared memory until the copy is made.
_COPIED = object()
#: Batches a worker may hold at once, each with its own segments.
SLOTS = 2
_REQUEST, _RESPONSE = 0, 1


def _key(kind: int, slot: int) -> int:
    """The key of a slot's request or response segment, in both processes' tables."""
    return 2 * slot + kind


class _Slice(NamedTuple):
    """Where one out-of-band buffer lies: in which segment, from which byte, how long."""

    segment: int
    offset: int
    length: int


class _Frame(NamedTuple):
    """A batch (parent to worker) or its outcome (worker to parent)."""

    stream: bytes
    #: per out-of-band buffer: a _Slice, or the buffer itself (small payloads)
    buffers: tuple[Any, ...]
    #: parent to worker: the request segment to map before reading the slices
    attach: str | None = None
    #: worker to parent: the model kept arrays of the request segment; use a new one
    retained: bool = False
    #: which of the worker's places the batch takes (its segments are the slot's)
    slot: int = 0
    #: parent to worker: shared arrays (by inode) the parent let go, to unmap
    release: tuple[int, ...] = ()
    #: parent to worker: the batch's number of items
    batch_size: int = 0


class _NeedResponseSegment(NamedTuple):
    """Worker to parent, before its outcome: send me the name of a segment this large."""

    size: int
    slot: int


class _ResponseSegment(NamedTuple):
    """Parent to worker: the segment asked for, or None (the outcome takes the pipe)."""

    name: str | None


class Transfer:
    """The copies between shared memory and private arrays that one message needs: made
    before a message is sent, or after one is read and before its outcome is rebuilt. They
    touch nothing but the arrays, so a thread can make them while the event loop runs on
    (numpy copies without holding the GIL)."""

    __slots__ = ("_copies", "copied", "nbytes")

    def __init__(self) -> None:
        self._copies: list[tuple[np.ndarray | None, np.ndarray]] = []
        #: The new arrays, for the copies added with no target, in the order added.
        self.copied: list[np.ndarray] = []
        self.nbytes = 0

    def add(self, target: np.ndarray | None, source: np.ndarray) -> None:
        """Copies ``source`` into ``target``, or into a new array (see ``copied``)."""
        self._copies.append((target, source))
        self.nbytes += source.nbytes

    def run(self) -> None:
        # New arrays are allocated here too: then the thread that fills their pages is
        # the one that frees and gets them back, and the copy is faster.
        for target, source in self._copies:
            if target is None:
                self.copied.append(np.copy(source))
            else:
                np.copyto(target, source)


class Packed(NamedTuple):
    """A batch ready to send once ``transfer`` has run."""

    message: bytes
    transfer: Transfer


class Received:
    """An outcome read from the worker: once ``transfer`` has copied its arrays out of
    shared memory, :meth:`outcome` rebuilds it."""

    __slots__ = ("_buffers", "_channel", "_frame", "transfer")

    def __init__(
        self, channel: ParentChannel, frame: _Frame, buffers: list[Any], transfer: Transfer
    ):
        self._channel = channel
        self._frame = frame
        self._buffers = buffers
        self.transfer = transfer

    def outcome(self) -> BatchOutcome:
        copied = iter(self.transfer.copied)
        buffers = [next(copied) if b is _COPIED else b for b in self._buffers]
        outcome: BatchOutcome = pickle.loads(self._frame.stream, buffers=buffers)
        self._channel._answered(self._frame)
        return unpack_outcome(outcome)


class Unsendable(Exception):
    """The batch could not be pickled; the exception it raised is ``__cause__``."""


class ParentGone(Exception):
    """The worker's pipe to its parent closed: the parent exited or was killed."""


class ParentChannel:
    """What the parent says to one worker and reads from it, without the pipe: it packs
    batches into messages and reads the messages that come back. It creates and names every
    segment, and removes the names the worker may not have removed (see ``_shm``)."""

    def __init__(self, *, shared: bool = False):
        """``shared``: the worker can map shared arrays; without it they are copied."""
        self._segments: dict[int, Segment] = {}
        # Per slot: names created for it, not yet known to be unlinked by the worker.
        self._unconfirmed: dict[int, list[str]] = {}
        self._shared = shared
        # Shared arrays (by inode) the worker has mapped, until it is told they are gone.
        self._mapped: set[int] = set()

    def pack(self, items: Sequence[Any], slot: int) -> Packed:
        """The message that sends a batch to run in ``slot``, which no unanswered batch
        may hold, and the copies to make before it goes.

        Raises:
            Unsendable: an item does not pickle.
        """
        key = _key(_REQUEST, slot)
        request = self._segments.get(key)
        find = REGISTRY.find if self._shared else _nowhere
        try:
            stack = not (self._shared and REGISTRY.holds_any(items))
            payload = pack(items, stack=stack)
            stream, buffers, transfer = _encode(payload, find, partial(self._reserve_in, key))
        except Exception as exc:
            raise Unsendable from exc
        new = self._segments.get(key)
        attach = new.name if new is not None and new is not request else None
        release = self._released()
        self._mapped.update(b.inode for b in buffers if isinstance(b, SharedSlice))
        frame = _Frame(
            stream, buffers, attach=attach, slot=slot, release=release, batch_size=len(items)
        )
        return Packed(_dump(frame), transfer)

    def take(self, message: bytes, reply: Callable[[bytes], None]) -> Received | None:
        """Reads a message from the worker: the outcome of its oldest unanswered batch
        (workers answer in order), or None for a request that ``reply`` answered at once
        (the worker asks for a response segment before the outcome it is for)."""
        frame = pickle.loads(message)
        if isinstance(frame, _NeedResponseSegment):
            segment = self._reserve(_key(_RESPONSE, frame.slot), frame.size)
            reply(_dump(_ResponseSegment(None if segment is None else segment.name)))
            return None
        # The worker answered this slot's batch: it mapped and unlinked the slot's names.
        self._unconfirmed.pop(frame.slot, None)
        transfer = Transfer()
        buffers = [_resolve(b, self._segments, view_in_parent, transfer) for b in frame.buffers]
        return Received(self, frame, buffers, transfer)

    def _answered(self, frame: _Frame) -> None:
        """The outcome of ``frame`` is out of shared memory."""
        if frame.retained:
            self._segments.pop(_key(_REQUEST, frame.slot)).close()

    def close(self) -> None:
        """Unmaps the segments; no name of ours is left behind."""
        for names in self._unconfirmed.values():
            for name in names:
                _shm.unlink(name)
        self._unconfirmed.clear()
        for segment in self._segments.values():
            segment.close()
        self._segments.clear()

    def _released(self) -> tuple[int, ...]:
        """The shared arrays the worker mapped that are gone here since the last batch."""
        if not self._mapped:
            return ()
        gone = tuple(inode for inode in self._mapped if not REGISTRY.alive(inode))
        self._mapped.difference_update(gone)
        return gone

    def _reserve_in(self, key: int, size: int) -> tuple[int, Segment] | None:
        segment = self._reserve(key, size)
        return None if segment is None else (key, segment)

    def _reserve(self, key: int, size: int) -> Segment | None:
        """Segment ``key``, replaced by a larger one if it holds less than ``size`` bytes;
        None if there is no shared memory to be had (the message uses the pipe)."""
        current = self._segments.get(key)
        if current is not None and current.size >= size:
            return current
        if not _shm.available():
            return None
        grown = max(size, 2 * current.size if current is not None else 0)
        try:
            segment = Segment.create(-(-grown // mmap.PAGESIZE) * mmap.PAGESIZE)
        except OSError:
            return None  # e.g. /dev/shm is full
        self._unconfirmed.setdefault(key // 2, []).append(segment.name)
        if current is not None:
            current.close()
        self._segments[key] = segment
        return segment


class WorkerChannel:
    """The worker's end of its pipe: it maps the segments the parent names."""

    def __init__(self, conn: Connection, name: str):
        self._conn = conn
        self._name = name
        self._segments: dict[int, Segment] = {}
        self._shared = SharedMaps()
        # Batches the parent sent ahead while this worker waited for a segment's name.
        self._ahead: deque[_Frame | None] = deque()

    def receive(self) -> _Frame | None:
        """The next batch, or None when the parent asks the worker to stop.

        Raises:
            ParentGone: the pipe closed.
        """
        if self._ahead:
            return self._ahead.popleft()
        message: _Frame | None = pickle.loads(self._recv())
        return message

    def answer(self, frame: _Frame, run: Callable[[Sequence[Any]], BatchOutcome]) -> None:
        """Runs ``frame``'s batch with ``run`` and sends its outcome.

        Raises:
            ParentGone: the pipe closed.
        """
        request_key = _key(_REQUEST, frame.slot)
        if frame.attach is not None:
            self._replace(request_key, Segment.attach(frame.attach))
        self._shared.forget(frame.release)
        # Outputs that are views of this batch's shared arrays go back as such: the
        # parent's caller holds those arrays until the outcome arrives.
        inputs = {b.inode for b in frame.buffers if isinstance(b, SharedSlice)}
        segments = self._segments

        def find(raw: memoryview) -> _Slice | SharedSlice | None:
            where = _find(raw, segments)
            return where if where is not None or not inputs else self._shared.find(raw, inputs)

        reserve = partial(self._reserve_response, frame.slot)
        # Outputs in the batch's shared arrays go back unstacked, as themselves.
        outcome = pack_outcome(self._run(frame, run), stack=not inputs)
        try:
            stream, buffers, transfer = _encode(outcome, find, reserve)
        except Exception:  # an output that does not pickle fails its item, not the worker
            stream, buffers, transfer = _encode(self._sendable(outcome), find, reserve)
        del outcome  # the items and outputs are gone before the in_use() check
        transfer.run()
        request = self._segments.get(request_key)
        retained = request is not None and request.in_use()
        if retained:
            del self._segments[request_key]  # its mapping lives on with the model's arrays
        self._send(_Frame(stream, buffers, retained=retained, slot=frame.slot))

    def _run(self, frame: _Frame, run: Callable[[Sequence[Any]], BatchOutcome]) -> BatchOutcome:
        try:
            items = unpack(_decode(frame, self._segments, self._shared.view))
        except Exception as exc:  # an item pickled in the parent does not unpickle here
            error = ModelError(
                f"model {self._name!r}: the batch cannot be read in the worker process: "
                f"{type(exc).__name__}: {exc}",
                model=self._name,
            )
            return BatchOutcome.failure(frame.batch_size, error)
        return run(items)

    def _sendable(self, outcome: BatchOutcome) -> BatchOutcome:
        """``outcome`` with each output that does not pickle replaced by its item's error."""
        values = list(unpack(outcome.values))
        errors = dict(outcome.errors or {})
        for index, value in enumerate(values):
            try:
                pickle.dumps(value, protocol=5, buffer_callback=_ignore)
            except Exception as exc:
                values[index] = None
                errors[index] = ModelError(
                    f"model {self._name!r}: the output cannot be sent back from the worker "
                    f"process: {type(exc).__name__}: {exc}",
                    model=self._name,
                )
        return BatchOutcome(values, errors)

    def _reserve_response(self, slot: int, size: int) -> tuple[int, Segment] | None:
        key = _key(_RESPONSE, slot)
        current = self._segments.get(key)
        if current is None or current.size < size:
            if not _shm.available():
                return None
            self._send(_NeedResponseSegment(size, slot))
            name = self._segment_name()
            if name is None:
                return None
            current = self._replace(key, Segment.attach(name))
        return key, current

    def _segment_name(self) -> str | None:
        """The parent's answer to a _NeedResponseSegment; batches it sent ahead of it wait."""
        while not isinstance(message := pickle.loads(self._recv()), _ResponseSegment):
            self._ahead.append(message)
        return message.name

    def _replace(self, which: int, segment: Segment) -> Segment:
        old = self._segments.get(which)
        if old is not None:
            old.close()
        self._segments[which] = segment
        return segment

    def _send(self, message: object) -> None:
        try:
            self._conn.send_bytes(_dump(message))
        except OSError as exc:
            raise ParentGone from exc

    def _recv(self) -> bytes:
        try:
            return self._conn.recv_bytes()
        except (EOFError, OSError) as exc:
            raise ParentGone from exc


def _dump(message: object) -> bytes:
    return pickle.dumps(message, protocol=5)


def _encode(
    payload: Any,
    find: Callable[[memoryview], _Slice | SharedSlice | None],
    reserve: Callable[[int], tuple[int, Segment] | None],
) -> tuple[bytes, tuple[Any, ...], Transfer]:
    """``payload``'s pickle stream and its buffers: where ``find`` says a buffer already
    lies in shared memory, then either slices of the segment ``reserve(size)`` gives (once
    there are THRESHOLD bytes to place) or the buffers themselves; and the copies into the
    segment, still to be made."""
    pickled: list[pickle.PickleBuffer] = []
    stream = pickle.dumps(payload, protocol=5, buffer_callback=pickled.append)
    buffers: list[Any] = []
    to_place: list[tuple[int, memoryview]] = []
    for index, buffer in enumerate(pickled):
        raw = buffer.raw()
        where = find(raw)
        if where is None:
            to_place.append((index, raw))
        buffers.append(buffer if where is None else where)
    transfer = Transfer()
    offsets, total = _layout([raw.nbytes for _, raw in to_place])
    if to_place and total >= THRESHOLD and (reserved := reserve(total)) is not None:
        which, segment = reserved
        for (index, raw), offset in zip(to_place, offsets, strict=True):
            target = segment.array[offset : offset + raw.nbytes]
            transfer.add(target, np.frombuffer(raw, np.uint8))
            buffers[index] = _Slice(which, offset, raw.nbytes)
    return stream, tuple(buffers), transfer


def _nowhere(raw: memoryview) -> None:
    return None


def _ignore(buffer: pickle.PickleBuffer) -> None:
    return None


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


def _decode(
    frame: _Frame,
    segments: dict[int, Segment],
    shared: Callable[[SharedSlice], np.ndarray],
) -> Any:
    """Unpickles ``frame``; its arrays are views of the segments, and of shared arrays."""
    return pickle.loads(
        frame.stream, buffers=[_resolve(b, segments, shared) for b in frame.buffers]
    )


def _resolve(
    buffer: Any,
    segments: dict[int, Segment],
    shared: Callable[[SharedSlice], np.ndarray],
    transfer: Transfer | None = None,
) -> Any:
    """The buffer a message's entry stands for; with ``transfer``, a segment's bytes are
    to be copied (by it) into a new array, which no later batch overwrites."""
    if isinstance(buffer, SharedSlice):
        return shared(buffer)
    if not isinstance(buffer, _Slice):
        return buffer
    view = segments[buffer.segment].array[buffer.offset : buffer.offset + buffer.length]
    if transfer is None:
        return view
    transfer.add(None, view)
    return _COPIED
