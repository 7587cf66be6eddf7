"""Shared-memory segments for batch buffers: created and named by the parent, unlinked at once.

A segment is a file in ``/dev/shm`` named ``asyncml-<parent pid>-<random>``. The parent
creates it and sends its name to a worker, which maps it and removes the name right away;
the parent also removes the name once the worker answered, or once the worker died. From
then on the memory lives only as long as some process maps it, and the kernel frees it when
the last one exits, killed or not: nothing is left in ``/dev/shm`` to clean up. A worker
whose parent was killed before the name reached it removes its parent's names on its way
out (:func:`sweep`), and names left by a parent killed together with its worker are
removed by the next process executor to start (:func:`sweep_orphans`).

``multiprocessing.shared_memory`` is not used: it registers every segment with the resource
tracker, which warns about and unlinks them at exit, and (before Python 3.13) registers a
second time in each process that attaches. Segments here have no owner to track.
"""

from __future__ import annotations

import contextlib
import functools
import mmap
import os
import secrets
import sys
import time
from pathlib import Path

import numpy as np

_DIRECTORY = Path("/dev/shm")
#: Seconds after which a dead parent's segment name counts as left behind.
ORPHAN_AGE_S = 600


@functools.cache
def available() -> bool:
    """Whether this system has POSIX shared memory as files (Linux)."""
    return _DIRECTORY.is_dir()


def prefix(parent_pid: int) -> str:
    """The start of the names of every segment created by process ``parent_pid``."""
    return f"asyncml-{parent_pid}-"


class Segment:
    """A shared-memory segment mapped into this process, as an array of bytes."""

    __slots__ = ("_array", "name")

    def __init__(self, name: str, mapping: mmap.mmap):
        self.name = name
        self._array: np.ndarray | None = np.frombuffer(mapping, np.uint8)

    @classmethod
    def create(cls, size: int) -> Segment:
        """A new segment of ``size`` bytes, named for this process (the parent).

        Raises:
            OSError: no shared memory, or not ``size`` bytes of it left.
        """
        name = prefix(os.getpid()) + secrets.token_hex(8)
        fd = os.open(_DIRECTORY / name, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            # Reserve the pages now: a full /dev/shm fails here with ENOSPC, not later with
            # a SIGBUS on the first write.
            os.posix_fallocate(fd, 0, size)
            mapping = mmap.mmap(fd, size)
        except BaseException:
            unlink(name)
            raise
        finally:
            os.close(fd)
        return cls(name, mapping)

    @classmethod
    def attach(cls, name: str) -> Segment:
        """Maps the parent's segment ``name`` and removes the name (the worker's side)."""
        fd = os.open(_DIRECTORY / name, os.O_RDWR)
        try:
            mapping = mmap.mmap(fd, os.fstat(fd).st_size)
        finally:
            os.close(fd)
            unlink(name)
        return cls(name, mapping)

    @property
    def array(self) -> np.ndarray:
        assert self._array is not None, "segment used after close()"
        return self._array

    @property
    def size(self) -> int:
        return len(self.array)

    def offset_of(self, buffer: memoryview) -> int | None:
        """Where ``buffer`` starts in this segment, or None if it is not inside it."""
        start = self.array.ctypes.data
        address: int = np.frombuffer(buffer, np.uint8).ctypes.data
        inside = start <= address and address + buffer.nbytes <= start + self.size
        return address - start if inside else None

    def in_use(self) -> bool:
        """Whether arrays made from this segment are still alive somewhere in this process.

        Every view of ``array`` holds a reference to it (numpy makes it their base), so
        beyond ours and ``getrefcount``'s own, any reference is a view still in use.
        """
        return sys.getrefcount(self.array) > 2

    def close(self) -> None:
        """Drops this process's mapping; views still alive keep it until they go."""
        self._array = None


def unlink(name: str) -> None:
    """Removes a segment's name; the memory goes when no process maps it any more."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(_DIRECTORY / name)


def sweep(parent_pid: int) -> None:
    """Removes every segment name of a parent that is gone."""
    for path in _DIRECTORY.glob(prefix(parent_pid) + "*"):
        unlink(path.name)


def sweep_orphans() -> list[str]:
    """Removes the segment names of every parent that is no longer running; returns them.

    A name outlives its parent only if the parent and the worker it was meant for were
    killed together in the moment between its creation and the worker mapping it (e.g. a
    SIGKILL to the whole process group). Each process executor sweeps such names as it
    starts. Only names older than :data:`ORPHAN_AGE_S` go: a parent in another pid
    namespace that shares this ``/dev/shm`` looks dead from here, and its fresh names are
    still on their way to its workers. A live process with a dead parent's pid keeps the
    names until it exits.
    """
    removed: list[str] = []
    if not available():  # also answers the question once, off the event loop
        return removed
    old = time.time() - ORPHAN_AGE_S
    for path in _DIRECTORY.glob("asyncml-*-*"):
        pid = path.name.split("-")[1]
        with contextlib.suppress(FileNotFoundError):
            if pid.isdigit() and not _running(int(pid)) and path.stat().st_mtime < old:
                unlink(path.name)
                removed.append(path.name)
    return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
