"""Part files: each commit's output written to a temporary name, synced, then renamed.

A part appears under its final name only complete, and only parts the journal lists
count: anything else in the folder (a temporary file, a part renamed just before a crash)
is a leftover of an interrupted commit and is deleted when the job resumes.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

_TEMPORARY = ".tmp"


class PartStore:
    """The folder of a job's part files. Methods block: call them from a thread.

    Args:
        folder: where parts go; created if missing.
        durable: sync files and the folder to disk (off only to measure what that costs).
    """

    def __init__(self, folder: Path, *, durable: bool = True):
        self.folder = folder
        self._durable = durable
        folder.mkdir(parents=True, exist_ok=True)

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
        """Deletes the folder and every file in it."""
        for path in self.folder.iterdir():
            path.unlink()
        self.folder.rmdir()


def sync_folder(folder: Path) -> None:
    """fsync on a folder: makes the names created or renamed in it durable."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
