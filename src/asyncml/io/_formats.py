"""Formats by file extension, and what a job needs of each: a reader that starts at a
position, and the assembly of output parts into one file."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO, Literal

from ._arrow import assemble_tables
from ._chunk import Source
from ._csv import CsvSource
from ._jsonl import JsonlSource
from ._parquet import ParquetSource

Format = Literal["jsonl", "csv", "parquet"]

_EXTENSIONS: dict[str, Format] = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
}


def format_of(path: str | Path) -> Format:
    """The format a path's extension names; ``"-"`` (stdin or stdout) is JSONL.

    Raises:
        ValueError: an extension that names no supported format.
    """
    if str(path) == "-":
        return "jsonl"
    suffix = Path(path).suffix.lower()
    try:
        return _EXTENSIONS[suffix]
    except KeyError:
        known = ", ".join(_EXTENSIONS)
        raise ValueError(
            f"{str(path)!r}: unknown format {suffix or '(no extension)'!r}; use one of {known}"
        ) from None


def open_source(
    path: str | Path,
    *,
    position: int = 0,
    first_row: int = 0,
    columns: Sequence[str] | None = None,
    chunk_size: int = 0,
    parse: bool = True,
) -> Source:
    """A reader of ``path`` that starts at ``position`` (from an earlier chunk's
    ``position``), numbering rows from ``first_row``.

    Args:
        columns: the only columns needed, if the format can read just those.
        chunk_size: bytes per block (JSONL, CSV) or rows per batch (Parquet); 0: default.
        parse: ``False``: JSONL rows are left unparsed, as the bytes of each line.

    Raises:
        OSError: the file cannot be opened.
        ValueError: an unknown format, or a file that is not what its extension says.
    """
    kind = format_of(path)
    if kind == "jsonl":
        return JsonlSource.open(
            path, position=position, first_row=first_row, block_bytes=chunk_size, parse=parse
        )
    if kind == "csv":
        return CsvSource.open(path, position=position, first_row=first_row, block_bytes=chunk_size)
    try:
        return ParquetSource(path, position=position, columns=columns, batch_rows=chunk_size)
    except OSError:
        raise
    except Exception as error:  # pyarrow's own errors: not a Parquet file
        raise ValueError(f"{str(path)!r} is not a readable Parquet file: {error}") from error


def part_format(output_format: Format) -> Format:
    """How parts of an output are stored: JSONL parts are concatenated, columnar outputs are
    assembled from Parquet parts."""
    return "jsonl" if output_format == "jsonl" else "parquet"


def assemble(parts: Sequence[Path], file: BinaryIO, output_format: Format) -> None:
    """Writes the parts, in order, into one file of ``output_format``."""
    if output_format == "jsonl":
        for part in parts:
            with part.open("rb") as source:
                shutil.copyfileobj(source, file, 1 << 20)
        return
    assemble_tables(parts, file, output_format=output_format)
