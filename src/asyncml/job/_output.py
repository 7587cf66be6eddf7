"""Where a job's results go: committed parts assembled at the end, or a stream (stdout).

:class:`CommittedOutput` implements the commit protocol. Each commit writes the output part
and the dead-letter part (temporary name, fsync, rename), syncs the folder, then records
both in the journal in one transaction: a crash before that transaction leaves files the
journal does not list, which the next start deletes; after it, the commit counts. At the
end the listed parts are assembled, in order, into the output and the dead-letter file
(each written under a temporary name, synced and renamed), the journal is marked done,
and the parts and journal are deleted.
"""

from __future__ import annotations

import io
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from ..io import (
    BadRow,
    Format,
    assemble,
    concat_tables,
    encode_jsonl,
    part_format,
    records_to_table,
    write_parquet,
)
from ._crash import CrashPoints
from ._journal import Commit, Journal, remove_journal
from ._ordered import Outcomes
from ._parts import PartStore, sync_folder
from ._rows import Items, dead_letter, encode_dead_letters, to_records


@dataclass(frozen=True, slots=True)
class Tally:
    """Totals since the job began: rows done (a prefix of the input), written and failed."""

    rows: int
    ok: int
    failed: int


class _PendingOutput:
    """Encoded rows not yet committed: JSONL bytes, or Arrow tables for CSV and Parquet."""

    def __init__(self, output_format: Format):
        self._format = output_format
        self._pieces: list[Any] = []

    def add(self, records: list[dict[str, Any]]) -> dict[int, BadRow]:
        if self._format == "jsonl":
            data, bad = encode_jsonl(records)
            if data:
                self._pieces.append(data)
            return bad
        table, bad = records_to_table(records, flat=self._format == "csv")
        if table.num_rows:
            self._pieces.append(table)
        return bad

    def take(self) -> bytes | None:
        pieces, self._pieces = self._pieces, []
        if not pieces:
            return None
        if self._format == "jsonl":
            return b"".join(pieces)
        buffer = io.BytesIO()
        write_parquet(concat_tables(pieces), buffer)
        return buffer.getvalue()


def encode_chunk(
    items: Items, outcomes: Outcomes[Any], id_name: str, pending: _PendingOutput
) -> tuple[int, list[dict[str, Any]]]:
    """Adds a chunk's records to ``pending``; returns how many, and the chunk's dead letters
    in row order."""
    records, dead = to_records(items, outcomes.values, outcomes.errors, id_name)
    bad = pending.add(records)
    if bad:  # outputs that cannot be written fail alone, like model errors
        offsets = [o for o in range(len(outcomes.values)) if o not in outcomes.errors]
        for offset, reason in bad.items():
            item = offsets[offset]
            row, ident = items.rows[item], items.ids[item]
            dead.append(dead_letter(row, ident, "output", reason.error, reason.message))
    if items.dead:
        dead = items.dead + dead
    if dead and (items.dead or bad):
        dead.sort(key=lambda letter: int(letter["row"]))
    return len(records) - len(bad), dead


class CommittedOutput:
    """Output written as committed parts, listed in a journal, assembled at the end.

    Methods block: call them from a thread. Without a journal (``journal=None``) the same
    parts are written, unsynced, and nothing survives a crash: the baseline that measures
    what the journal costs.
    """

    def __init__(
        self,
        *,
        output: Path,
        output_format: Format,
        dead_letters: Path,
        id_name: str,
        parts: PartStore,
        journal: Journal | None,
        crash: CrashPoints,
        committed: list[Commit],
    ):
        self._output = output
        self._format = output_format
        self._dead_letters = dead_letters
        self._id_name = id_name
        self._parts = parts
        self._journal = journal
        self._crash = crash
        self._commits = committed
        last = committed[-1] if committed else None
        self._seq = last.seq if last else 0
        self.tally = Tally(last.next_row, last.ok, last.failed) if last else Tally(0, 0, 0)
        self._position = last.position if last else 0
        self._pending = _PendingOutput(output_format)
        self._dead: list[bytes] = []
        self._uncommitted = False

    def add(self, items: Items, outcomes: Outcomes[Any]) -> Tally:
        """Encodes one chunk's outcomes (the next rows of the input) for the next commit."""
        ok, dead = encode_chunk(items, outcomes, self._id_name, self._pending)
        if dead:
            self._dead.append(encode_dead_letters(dead))
        self.tally = Tally(items.end_row, self.tally.ok + ok, self.tally.failed + len(dead))
        self._position = items.position
        self._uncommitted = True
        return self.tally

    def commit(self) -> Commit | None:
        """Commits what was added since the last commit (see the module docstring)."""
        if not self._uncommitted:
            return None
        seq = self._seq + 1
        part = self._write(f"{seq:06d}.{part_format(self._format)}", self._pending.take(), seq)
        dead = b"".join(self._dead)
        self._dead = []
        dead_part = self._write(f"{seq:06d}.dead.jsonl", dead or None, seq)
        self._parts.sync()
        commit = Commit(
            seq, self.tally.rows, self._position, self.tally.ok, self.tally.failed, part, dead_part
        )
        if self._journal is not None:
            self._journal.record(commit)
        self._crash.reached("after-journal", seq)
        self._commits.append(commit)
        self._seq = seq
        self._uncommitted = False
        return commit

    def _write(self, name: str, data: bytes | None, seq: int) -> str | None:
        if data is None:
            return None
        self._parts.write(name, data, synced=lambda: self._crash.reached("before-rename", seq))
        self._crash.reached("after-rename", seq)
        return name

    def finish(self) -> None:
        """Commits the rest, assembles the output and dead letters, and cleans up."""
        self.commit()
        folder = self._parts.folder
        outputs = [folder / c.part for c in self._commits if c.part]
        _replace_atomically(self._output, lambda file: assemble(outputs, file, self._format))
        self.publish_dead_letters()
        self._crash.reached("after-assemble")
        if self._journal is not None:
            self._journal.set("done", True)
        self._crash.reached("after-done")
        self.close(remove=True)

    def publish_dead_letters(self) -> None:
        """Writes the committed dead letters to the dead-letter file (for a job stopped by
        its failure limit, so far: a resumed run writes the file again at its end)."""
        folder = self._parts.folder
        deads = [folder / c.dead_part for c in self._commits if c.dead_part]
        if deads:
            _replace_atomically(self._dead_letters, lambda file: assemble(deads, file, "jsonl"))
        else:
            self._dead_letters.unlink(missing_ok=True)  # a stale file from an earlier run

    def close(self, *, remove: bool = False) -> None:
        """Closes the journal and lets the parts folder go; with ``remove``, deletes them."""
        try:
            if self._journal is not None:
                self._journal.close()
                if remove:
                    remove_journal(self._journal.path)
            if remove:
                self._parts.remove()
        finally:
            self._parts.close()


def _replace_atomically(path: Path, write: Any) -> None:
    temporary = path.with_name(path.name + ".tmp")
    with temporary.open("wb") as file:
        write(file)
        file.flush()
        os.fsync(file.fileno())
    temporary.replace(path)
    sync_folder(path.parent)


class StreamedOutput:
    """JSONL rows written straight to a stream (stdout), as each chunk completes.

    Nothing is journaled: a stream cannot be taken back, so such a job cannot resume.
    Dead letters go to their file as they come.
    """

    def __init__(self, *, stream: BinaryIO | None, dead_letters: Path, id_name: str):
        self._stream = stream if stream is not None else sys.stdout.buffer
        self._dead_path = dead_letters
        self._dead_file: BinaryIO | None = None
        self._id_name = id_name
        self._pending = _PendingOutput("jsonl")
        self.tally = Tally(0, 0, 0)

    def add(self, items: Items, outcomes: Outcomes[Any]) -> Tally:
        """Writes one chunk's rows and dead letters."""
        ok, dead = encode_chunk(items, outcomes, self._id_name, self._pending)
        data = self._pending.take()
        if data:
            self._stream.write(data)
        if dead:
            if self._dead_file is None:
                self._dead_file = self._dead_path.open("wb")
            self._dead_file.write(encode_dead_letters(dead))
        self.tally = Tally(items.end_row, self.tally.ok + ok, self.tally.failed + len(dead))
        return self.tally

    def commit(self) -> None:
        """Flushes what was written."""
        self._stream.flush()
        if self._dead_file is not None:
            self._dead_file.flush()

    def finish(self) -> None:
        """Flushes and closes the dead-letter file (deletes a stale one if no row failed)."""
        self.commit()
        self.close()
        if self.tally.failed == 0:
            self._dead_path.unlink(missing_ok=True)

    def publish_dead_letters(self) -> None:
        """Flushes the dead-letter file, written as rows fail."""
        self.commit()

    def close(self, *, remove: bool = False) -> None:
        """Closes the dead-letter file."""
        if self._dead_file is not None:
            self._dead_file.close()
            self._dead_file = None
