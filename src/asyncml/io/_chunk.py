"""What a reader yields: a chunk of consecutive input rows and where the next one starts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

#: Placeholder in :attr:`RowChunk.rows` for a row that could not be parsed.
BAD_ROW: Any = object()


@dataclass(frozen=True, slots=True)
class BadRow:
    """An input row that could not be parsed (malformed JSON, a short CSV record)."""

    error: str
    message: str


@dataclass(slots=True)
class RowChunk:
    """Consecutive rows of the input, numbered from ``first_row``.

    Attributes:
        first_row: 0-based number of the chunk's first row in the whole input.
        rows: one entry per row: a dict (a record), any JSON value (JSONL), or
            :data:`BAD_ROW` where ``bad`` holds why the row could not be parsed; the bytes
            of each line for JSONL read unparsed.
        bad: offset within the chunk -> why that row is bad.
        position: where the row after this chunk starts (a byte offset for JSONL and CSV,
            a row number for Parquet); reading resumes there.
    """

    first_row: int
    rows: list[Any]
    position: int
    bad: dict[int, BadRow] = field(default_factory=dict)

    @property
    def end_row(self) -> int:
        """Number of the row after this chunk."""
        return self.first_row + len(self.rows)


class Source(Protocol):
    """A reader of rows in chunks. Its methods block: call them from a thread."""

    #: What ``position`` counts: ``"bytes"`` or ``"rows"``.
    unit: str
    #: The position at the end of the input, when cheap to know (file size, row count).
    total: int | None

    def read(self) -> RowChunk | None:
        """The next chunk, or ``None`` at the end of the input."""
        ...

    def close(self) -> None:
        """Releases the file."""
        ...
