"""CSV: read in blocks of whole records and parsed by pyarrow, one block at a time.

A block ends at the last newline outside quotes (an even number of ``"`` before it), so a
quoted value may span lines and every block's end is a byte offset a resumed read can seek
to. Column types are inferred per block; the header is read from the file's first record.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, BinaryIO

from ._chunk import BAD_ROW, BadRow, RowChunk

DEFAULT_BLOCK_BYTES = 1 << 20
#: Bytes carried while looking for the end of a quoted value, at least; past it (a value
#: that long is far likelier a lone quote), the block ends at its last newline.
CARRY_LIMIT = 16 << 20


class CsvSource:
    """Reads a CSV file with a header line in chunks of whole records."""

    unit = "bytes"

    def __init__(
        self,
        file: BinaryIO,
        names: list[str],
        *,
        position: int,
        first_row: int,
        total: int | None,
        block_bytes: int = DEFAULT_BLOCK_BYTES,
    ):
        self.total = total
        self._file = file
        self._names = names
        self._position = position
        self._next_row = first_row
        #: Bytes the next read takes (a job sizes it to its model's pace).
        self.block_bytes = block_bytes
        self._carry = b""
        self._carry_odd = False  # an odd number of quotes in the carry
        self._carry_limit = max(CARRY_LIMIT, 16 * block_bytes)
        self._eof = False

    @classmethod
    def open(
        cls, path: str | Path, *, position: int = 0, first_row: int = 0, block_bytes: int = 0
    ) -> CsvSource:
        """Opens ``path``, reads its header and seeks to ``position`` (0: after the header).

        Raises:
            OSError: the file cannot be opened.
            ValueError: the file has no header record.
        """
        block = block_bytes or DEFAULT_BLOCK_BYTES
        file = open(path, "rb")  # noqa: SIM115 - owned by the source, closed by close()
        try:
            names, header_end = _read_header(file, block)
            start = max(position, header_end)
            file.seek(start)
        except BaseException:
            file.close()
            raise
        total = Path(path).stat().st_size
        return cls(file, names, position=start, first_row=first_row, total=total, block_bytes=block)

    def read(self) -> RowChunk | None:
        """The next chunk of whole records, or ``None`` at the end of the input."""
        while not (self._eof and not self._carry):
            data = self._file.read(self.block_bytes)
            if data:
                # The carry holds no record end (else the last cut would have taken it), so
                # only the new data is searched: linear, however long the carry grows.
                end = record_end(data, odd=self._carry_odd)
                carried = len(self._carry)
                if end == 0 and carried + len(data) > self._carry_limit:
                    # A lone quote inside a value ("a 1" screen") looks like an open quoted
                    # value: past a bound, cut at the last newline and let pyarrow judge.
                    end = data.rfind(b"\n") + 1
                buffer = self._carry + data if self._carry else data
                if end == 0:
                    self._carry = buffer
                    self._carry_odd ^= data.count(b'"') % 2 == 1
                    continue
                cut = carried + end
                block, self._carry = buffer[:cut], buffer[cut:]
                self._carry_odd = self._carry.count(b'"') % 2 == 1
            else:
                self._eof = True
                block, self._carry = self._carry, b""
            self._position += len(block)
            if not block.strip():
                continue
            rows, bad = self._parse(block)
            if rows:
                chunk = RowChunk(self._next_row, rows, self._position, bad)
                self._next_row += len(rows)
                return chunk
        return None

    def _parse(self, block: bytes) -> tuple[list[Any], dict[int, BadRow]]:
        import pyarrow as pa
        from pyarrow import csv

        skipped: list[tuple[int, BadRow]] = []

        def on_invalid_row(row: Any) -> str:
            message = f"expected {row.expected_columns} columns, got {row.actual_columns}"
            skipped.append((row.number - 1, BadRow("CSVRowError", message)))
            return "skip"

        try:
            table = csv.read_csv(
                io.BytesIO(block),
                read_options=csv.ReadOptions(column_names=self._names, use_threads=False),
                parse_options=csv.ParseOptions(
                    newlines_in_values=True, invalid_row_handler=on_invalid_row
                ),
            )
        except pa.ArrowInvalid as error:  # e.g. a quote never closed: the rest is one bad row
            return [BAD_ROW], {0: BadRow("CSVError", str(error).splitlines()[0])}
        rows: list[Any] = table.to_pylist()
        bad: dict[int, BadRow] = {}
        for name in table.column_names:
            if pa.types.is_binary(table.schema.field(name).type):
                _decode_text(rows, name, bad)
        for offset, reason in skipped:  # pyarrow numbers records from 1, in order
            rows.insert(offset, BAD_ROW)
            bad = {o + (o >= offset): r for o, r in bad.items()}
            bad[offset] = reason
        return rows, bad

    def close(self) -> None:
        """Closes the file."""
        self._file.close()


def _decode_text(rows: list[Any], name: str, bad: dict[int, BadRow]) -> None:
    """pyarrow reads a column as bytes when one of its values is not UTF-8: the others get
    their text back, and the rows holding such values are bad."""
    for offset, row in enumerate(rows):
        value = row[name]
        if isinstance(value, bytes):
            try:
                row[name] = value.decode()
            except UnicodeDecodeError:
                message = f"field {name!r} is not UTF-8 text"
                bad.setdefault(offset, BadRow("UnicodeDecodeError", message))
    for offset in bad:
        rows[offset] = BAD_ROW


def record_end(data: bytes, *, odd: bool = False) -> int:
    """Index just after the last newline of ``data`` that is outside quotes (an even number
    of quotes before it, counting ``odd`` as one more); 0 if none."""
    quotes = data.count(b'"') + odd
    end = len(data)
    while (newline := data.rfind(b"\n", 0, end)) >= 0:
        quotes -= data.count(b'"', newline, end)
        if quotes % 2 == 0:
            return newline + 1
        end = newline
    return 0


def _read_header(file: BinaryIO, block_bytes: int) -> tuple[list[str], int]:
    from pyarrow import csv

    buffer = b""
    while (cut := _first_record_end(buffer)) == 0:
        data = file.read(block_bytes)
        if not data:
            cut = len(buffer)
            break
        buffer += data
    header = buffer[:cut]
    if not header.strip():
        raise ValueError("the CSV file has no header line")
    table = csv.read_csv(
        io.BytesIO(header), parse_options=csv.ParseOptions(newlines_in_values=True)
    )
    names: list[str] = table.column_names
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"the CSV header names {', '.join(map(repr, repeated))} more than once")
    return names, cut


def _first_record_end(buffer: bytes) -> int:
    start = 0
    while (newline := buffer.find(b"\n", start)) >= 0:
        if buffer.count(b'"', 0, newline) % 2 == 0:
            return newline + 1
        start = newline + 1
    return 0
