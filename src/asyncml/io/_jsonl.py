"""JSON Lines: one JSON value per line, read in blocks of bytes and parsed with orjson.

A block ends at its last newline, so every chunk holds whole lines and its end is a byte
offset a resumed read can seek to. Blank lines are not rows, and a UTF-8 byte order mark
at the start of the file is not part of the first.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from ._chunk import BAD_ROW, BadRow, RowChunk

DEFAULT_BLOCK_BYTES = 1 << 20
_BOM = b"\xef\xbb\xbf"
_DUMP_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS | orjson.OPT_APPEND_NEWLINE


class JsonlSource:
    """Reads a JSONL file (or stdin) in chunks of whole lines."""

    unit = "bytes"

    def __init__(
        self,
        file: BinaryIO,
        *,
        position: int = 0,
        first_row: int = 0,
        total: int | None = None,
        block_bytes: int = DEFAULT_BLOCK_BYTES,
        owned: bool = True,
        parse: bool = True,
    ):
        self.total = total
        self._file = file
        self._position = position
        self._next_row = first_row
        #: Bytes the next read takes (a job sizes it to its model's pace).
        self.block_bytes = block_bytes
        self._owned = owned
        self._parse = parse
        self._carry = b""
        self._eof = False
        self._at_start = position == 0

    @classmethod
    def open(
        cls,
        path: str | Path,
        *,
        position: int = 0,
        first_row: int = 0,
        block_bytes: int = 0,
        parse: bool = True,
    ) -> JsonlSource:
        """Opens ``path`` (``"-"``: stdin) and seeks to ``position``. With ``parse=False``
        each row is the line itself, as bytes (blank lines are still skipped): for
        whoever parses it later (:func:`parse_rows`).

        Raises:
            OSError: the file cannot be opened.
        """
        block = block_bytes or DEFAULT_BLOCK_BYTES
        if str(path) == "-":
            return cls(sys.stdin.buffer, block_bytes=block, owned=False, parse=parse)
        file = open(path, "rb")  # noqa: SIM115 - owned by the source, closed by close()
        total = Path(path).stat().st_size
        file.seek(position)
        return cls(
            file,
            position=position,
            first_row=first_row,
            total=total,
            block_bytes=block,
            parse=parse,
        )

    def read(self) -> RowChunk | None:
        """The next chunk of whole lines, or ``None`` at the end of the input."""
        while not (self._eof and not self._carry):
            data = self._file.read(self.block_bytes)
            if self._at_start:
                self._at_start = False
                if data.startswith(_BOM):  # some editors start UTF-8 files with one
                    self._position += len(_BOM)
                    data = data[len(_BOM) :]
            if data:
                buffer = self._carry + data if self._carry else data
                cut = buffer.rfind(b"\n") + 1
                if cut == 0:  # a line longer than a block: read on
                    self._carry = buffer
                    continue
                block, self._carry = buffer[:cut], buffer[cut:]
            else:  # the last line may lack its newline
                self._eof = True
                block, self._carry = self._carry, b""
            self._position += len(block)
            rows, bad = parse_lines(block) if self._parse else (split_lines(block), {})
            if rows:
                chunk = RowChunk(self._next_row, rows, self._position, bad)
                self._next_row += len(rows)
                return chunk
        return None

    def close(self) -> None:
        """Closes the file (not stdin)."""
        if self._owned:
            self._file.close()


def split_lines(block: bytes) -> list[bytes]:
    """The non-blank lines of ``block``."""
    return [line for line in block.split(b"\n") if line.strip()]


def parse_lines(block: bytes) -> tuple[list[Any], dict[int, BadRow]]:
    """Parses each non-blank line of ``block``; a malformed line becomes a bad row."""
    lines = block.split(b"\n")
    if not lines[-1]:
        lines.pop()
    return parse_rows(lines)


def parse_rows(lines: list[bytes]) -> tuple[list[Any], dict[int, BadRow]]:
    """Parses each non-blank line of ``lines``; a malformed line becomes a bad row."""
    loads = orjson.loads
    try:
        return [loads(line) for line in lines], {}
    except orjson.JSONDecodeError:
        pass  # a blank or malformed line somewhere: go line by line
    rows: list[Any] = []
    bad: dict[int, BadRow] = {}
    for line in lines:
        if not line.strip():
            continue
        try:
            rows.append(loads(line))
        except orjson.JSONDecodeError as error:
            bad[len(rows)] = BadRow("JSONDecodeError", f"malformed JSON: {error}")
            rows.append(BAD_ROW)
    return rows, bad


def encode_jsonl(records: Sequence[Any]) -> tuple[bytes, dict[int, BadRow]]:
    """One JSON line per record (numpy scalars and arrays included).

    Returns:
        The lines, and offset -> why, for records that cannot be written as JSON (they are
        left out of the lines).
    """
    dumps = orjson.dumps
    try:
        return b"".join([dumps(record, option=_DUMP_OPTIONS) for record in records]), {}
    except TypeError:
        pass  # some output is not JSON-serialisable: find which
    lines: list[bytes] = []
    bad: dict[int, BadRow] = {}
    for offset, record in enumerate(records):
        try:
            lines.append(dumps(record, option=_DUMP_OPTIONS))
        except TypeError as error:
            bad[offset] = BadRow(type(error).__name__, f"output is not serialisable: {error}")
    return b"".join(lines), bad
