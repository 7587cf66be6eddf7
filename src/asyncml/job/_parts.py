"""Part files: each commit's output written to a temporary name, synced, then renamed.

A part appears under its final name only complete, and only parts the journal lists
count: anything else in the folder (a temporary file, a part renamed just before a crash)
is a leftover of an interrupted commit and is deleted when the job resumes.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable
from pathlib import Path

_TEMPORARY = ".tmp"


class FolderLocked(Exception):
    """Another process holds the parts folder: a job on the same output is running."""


class PartStore:
    """The folder of a job's part files. Methods block: call them from a thread.

    The store holds an exclusive lock on the folder until :meth:`close` (or
    :meth:`remove`), so that two runs of one job never write parts side by side; the
    system drops it when the process dies, however it dies.

    Args:
        folder: where parts go; created if missing.
        durable: sync files and the folder to disk (off only to measure what that costs).

    Raises:
        FolderLocked: another process holds the folder.
        OSError: the folder cannot be created or opened.
    """

    def __init__(self, folder: Path, *, durable: bool = True):
        self.folder = folder
        self._durable = durable
        self._lock = _lock_folder(folder)

    def write(self, name: str, data: bytes, *, synced: Callable[[], None] | None = None) -> Path:
        """Writes ``data`` as part ``name``: to a temporary file, synced, then renamed.

        Call :meth:`sync` before recording the part, so the rename is on disk too.

        Args:
            synced: called between the sync and the rename (crash tests stop there).
        """
        final = self.folder / name
        temporary = final.with_name(final.name + _TEMPORARY)
        with temporary.open("wb") as file:
            file.write(data)
            if self._durable:
                file.flush()
                os.fsync(file.fileno())
        if synced is not None:
            synced()
        temporary.replace(final)
        return final

    def sync(self) -> None:
        """Makes renames in the folder durable."""
        if self._durable:
            sync_folder(self.folder)

    def discard_unlisted(self, listed: set[str]) -> list[str]:
        """Deletes every file that is not one of the ``listed`` parts; returns their names."""
        discarded = sorted(p.name for p in self.folder.iterdir() if p.name not in listed)
        for name in discarded:
            (self.folder / name).unlink()
        return discarded

    def remove(self) -> None:
        """Deletes the folder and every file in it, and lets it go."""
        for path in self.folder.iterdir():
            path.unlink()
        self.folder.rmdir()
        self.close()

    def close(self) -> None:
        """Lets the folder go (releases the lock)."""
        if self._lock >= 0:
            os.close(self._lock)
            self._lock = -1


def _lock_folder(folder: Path) -> int:
    """An open descriptor of ``folder`` (created if missing) holding its exclusive lock."""
    for _ in range(3):
        folder.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            raise FolderLocked(str(folder)) from None
        except BaseException:
            os.close(descriptor)
            raise
        # The run that held the lock may have finished and removed the folder meanwhile.
        if folder.is_dir() and os.path.samestat(os.fstat(descriptor), folder.stat()):
            return descriptor
        os.close(descriptor)
    raise OSError(f"the folder {str(folder)!r} keeps being removed")


def sync_folder(folder: Path) -> None:
    """fsync on a folder: makes the names created or renamed in it durable."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
