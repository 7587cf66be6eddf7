"""Arrays made in shared memory, which process workers read and write in place: no copy.

An ordinary array crosses to a worker process as one copy into the worker's request segment
(see ``_channel``): for a 4 MB array that copy costs more than many models do. An array from
:func:`shared_array` lives in its own anonymous shared-memory file (``memfd_create``), which
the worker maps by opening ``/proc/<parent pid>/fd/<fd>``: the message carries only where
the array lies, and an output that is a view of such an input comes back the same way.

The file has no name: nothing can be left behind in ``/dev/shm``, whatever gets killed. The
parent holds its descriptor while the array (or any view of it) lives and closes it when
the last one goes; each worker unmaps it once the parent tells it the array is gone (with
its next batch).
"""

from __future__ import annotations

import bisect
import math
import mmap
import os
import sys
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from operator import index
from typing import NamedTuple, SupportsIndex

import numpy as np
import numpy.typing as npt


class SharedSlice(NamedTuple):
    """Where one buffer lies in a shared array's file. ``pid`` and ``fd`` say where a
    worker opens the file; a worker naming one of its batch's arrays back to the parent
    leaves them out (0 and -1): the parent finds its array by ``inode``."""

    pid: int
    fd: int
    inode: int
    offset: int
    length: int


@dataclass(frozen=True, slots=True)
class _Block:
    """One shared array's file, as this process maps it."""

    start: int
    end: int
    fd: int
    inode: int
    mapping: weakref.ref[mmap.mmap]


class _Registry:
    """The live shared arrays of this process, by address.

    Blocks are dropped by a finalizer, which may run in any thread at any allocation (it is
    the garbage collector's); it only closes the file and notes the inode, and the next
    call here forgets the block, so a new mapping at the same address is never mistaken
    for the old one.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._starts: list[int] = []
        self._blocks: list[_Block] = []
        self._by_inode: dict[int, _Block] = {}
        self._gone: list[int] = []  # appended to by finalizers; list.append is atomic

    def add(self, size: int) -> mmap.mmap:
        """A new zero-filled shared file of ``size`` bytes, mapped."""
        fd = os.memfd_create("asyncml-shared", os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, size)
            mapping = mmap.mmap(fd, size)
        except BaseException:
            os.close(fd)
            raise
        start = np.frombuffer(mapping, np.uint8).ctypes.data
        inode = os.fstat(fd).st_ino
        weakref.finalize(mapping, self._closed, fd, inode)
        with self._lock:
            self._forget_gone()
            block = _Block(start, start + size, fd, inode, weakref.ref(mapping))
            at = bisect.bisect(self._starts, start)
            self._starts.insert(at, start)
            self._blocks.insert(at, block)
            self._by_inode[inode] = block
        return mapping

    def holds_any(self, items: Sequence[object]) -> bool:
        """Whether one of ``items`` is an array in a shared array's memory."""
        return bool(self._starts) and any(
            self.find(item.data.cast("B")) is not None
            for item in items
            if isinstance(item, np.ndarray) and item.flags.c_contiguous
        )

    def find(self, buffer: memoryview) -> SharedSlice | None:
        """Where ``buffer`` lies, if inside a shared array of this process."""
        if not self._starts or not buffer.nbytes:
            return None
        address: int = np.frombuffer(buffer, np.uint8).ctypes.data
        with self._lock:
            self._forget_gone()
            at = bisect.bisect(self._starts, address) - 1
            if at < 0:
                return None
            block = self._blocks[at]
            if address + buffer.nbytes > block.end or block.mapping() is None:
                return None
            offset = address - block.start
            return SharedSlice(os.getpid(), block.fd, block.inode, offset, buffer.nbytes)

    def view(self, where: SharedSlice) -> np.ndarray | None:
        """The bytes ``where`` names, if this process still maps them (as their parent)."""
        with self._lock:
            block = self._by_inode.get(where.inode)
            mapping = None if block is None else block.mapping()
        if mapping is None:
            return None
        return np.frombuffer(mapping, np.uint8)[where.offset : where.offset + where.length]

    def alive(self, inode: int) -> bool:
        with self._lock:
            self._forget_gone()
            return inode in self._by_inode

    def _closed(self, fd: int, inode: int) -> None:
        os.close(fd)
        self._gone.append(inode)

    def _forget_gone(self) -> None:
        while self._gone:
            block = self._by_inode.pop(self._gone.pop())
            at = bisect.bisect_left(self._starts, block.start)
            while self._blocks[at] is not block:
                at += 1
            del self._starts[at], self._blocks[at]


REGISTRY = _Registry()


def available() -> bool:
    """Whether shared arrays can be made here (Linux: ``memfd_create`` and ``/proc``)."""
    return sys.platform == "linux" and hasattr(os, "memfd_create")


def readable_from(pid: int) -> bool:
    """Whether this process may open process ``pid``'s files through ``/proc`` (a worker
    asks this of its parent: hardened kernels may forbid it, and then arrays are copied)."""
    try:
        os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    return available()


def shared_array(
    shape: SupportsIndex | Sequence[SupportsIndex], dtype: npt.DTypeLike = np.float64
) -> np.ndarray:
    """A new zero-filled array in shared memory, which process workers use without a copy.

    Use it like ``np.zeros``: fill it, then pass it (or a contiguous view of it) to a model
    on process workers. The worker reads the same memory, and an output that is a view of
    it (``return batch``) comes back the same way. A model that writes into its input
    writes into the caller's array. Elsewhere (threads, Ray, pickle) it is an ordinary
    array. The memory is freed when the array and every view of it are gone.

    Where shared memory files are not available (not Linux), this is ``np.zeros``.
    """
    layout = np.dtype(dtype)
    dims = tuple(map(index, shape)) if isinstance(shape, Sequence) else (index(shape),)
    if any(dim < 0 for dim in dims):
        raise ValueError(f"negative dimensions are not allowed: {dims}")
    count = math.prod(dims)
    if not available():
        return np.zeros(dims, layout)
    size = max(1, count * layout.itemsize)
    mapping = REGISTRY.add(-(-size // mmap.PAGESIZE) * mmap.PAGESIZE)
    return np.frombuffer(mapping, layout, count).reshape(dims)


class SharedMaps:
    """A worker's mappings of its parent's shared arrays, by inode."""

    def __init__(self) -> None:
        self._maps: dict[int, np.ndarray] = {}

    def view(self, where: SharedSlice) -> np.ndarray:
        """The bytes ``where`` names, mapped on first use.

        Raises:
            OSError: the parent's file cannot be opened (e.g. ``/proc`` is restricted).
        """
        array = self._maps.get(where.inode)
        if array is None:
            array = self._maps[where.inode] = _open(where)
        return array[where.offset : where.offset + where.length]

    def find(self, buffer: memoryview, inodes: set[int]) -> SharedSlice | None:
        """Where ``buffer`` lies, if inside one of the shared arrays ``inodes``."""
        address: int = np.frombuffer(buffer, np.uint8).ctypes.data if buffer.nbytes else 0
        for inode in inodes:
            array = self._maps[inode]
            start = array.ctypes.data
            if start <= address and address + buffer.nbytes <= start + len(array):
                return SharedSlice(0, -1, inode, address - start, buffer.nbytes)
        return None

    def forget(self, inodes: Sequence[int]) -> None:
        """Unmaps arrays the parent let go (views a model kept live on with them)."""
        for inode in inodes:
            self._maps.pop(inode, None)


def _open(where: SharedSlice) -> np.ndarray:
    fd = os.open(f"/proc/{where.pid}/fd/{where.fd}", os.O_RDWR)
    try:
        status = os.fstat(fd)
        if status.st_ino != where.inode:  # cannot happen while the parent holds the array
            raise OSError(f"shared array {where.inode} is gone from process {where.pid}")
        mapping = mmap.mmap(fd, status.st_size)
    finally:
        os.close(fd)
    return np.frombuffer(mapping, np.uint8)


def view_in_parent(where: SharedSlice) -> np.ndarray:
    """The parent's view of bytes a worker names in one of the batch's shared arrays.

    Raises:
        LookupError: the array is gone (cannot happen: the batch's items hold it).
    """
    view = REGISTRY.view(where)
    if view is None:
        raise LookupError(f"shared array {where.inode} is gone")
    return view
