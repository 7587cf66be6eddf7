"""Parquet: read in record batches; a resumed read starts at the row group holding its row.

Nanosecond times are read to the microsecond, as Python's datetime holds them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ._chunk import RowChunk

DEFAULT_BATCH_ROWS = 8192


class ParquetSource:
    """Reads a Parquet file in record batches; positions count rows."""

    unit = "rows"

    def __init__(
        self,
        path: str | Path,
        *,
        position: int = 0,
        columns: Sequence[str] | None = None,
        batch_rows: int = 0,
    ):
        import pyarrow.parquet as pq

        self._file = pq.ParquetFile(path)
        metadata = self._file.metadata
        self.total: int | None = metadata.num_rows
        group, group_start = 0, 0
        while group < metadata.num_row_groups:
            rows = metadata.row_group(group).num_rows
            if group_start + rows > position:
                break
            group_start += rows
            group += 1
        present = set(self._file.schema_arrow.names)
        wanted = list(columns) if columns and all(c in present for c in columns) else None
        self._batches: Iterator[Any] = self._file.iter_batches(
            batch_size=batch_rows or DEFAULT_BATCH_ROWS,
            row_groups=list(range(group, metadata.num_row_groups)),
            columns=wanted,
            use_threads=False,
        )
        self._skip = position - group_start
        self._position = position

    def read(self) -> RowChunk | None:
        """The next record batch as rows, or ``None`` at the end of the file."""
        for batch in self._batches:
            if self._skip:
                skip = min(self._skip, batch.num_rows)
                batch = batch.slice(skip)
                self._skip -= skip
            if batch.num_rows:
                first = self._position
                self._position += batch.num_rows
                return RowChunk(first, _to_microseconds(batch).to_pylist(), self._position)
        return None

    def close(self) -> None:
        """Closes the file."""
        self._file.close()


def _to_microseconds(batch: Any) -> Any:
    """``batch`` with nanosecond times and durations cut to microseconds: Python's datetime
    and timedelta hold no finer, and pyarrow turns finer ones into pandas objects only."""
    import pyarrow as pa

    columns = batch.columns
    changed = False
    for index, column in enumerate(columns):
        kind = column.type
        if getattr(kind, "unit", None) != "ns":
            continue
        if pa.types.is_timestamp(kind):
            finer = pa.timestamp("us", kind.tz)
        elif pa.types.is_duration(kind):
            finer = pa.duration("us")
        elif pa.types.is_time64(kind):
            finer = pa.time64("us")
        else:
            continue
        columns[index] = column.cast(finer, safe=False)
        changed = True
    if not changed:
        return batch
    return pa.RecordBatch.from_arrays(columns, names=batch.schema.names)
