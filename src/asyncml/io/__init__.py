"""Row sources and output encoders for JSONL, CSV and Parquet files.

Readers yield :class:`RowChunk` objects: consecutive rows and the position (a byte offset,
or a row number for Parquet) where reading can resume after them. pyarrow is imported only
when a CSV or Parquet file is read or written.
"""

from ._arrow import concat_tables, records_to_table, write_parquet
from ._chunk import BAD_ROW, BadRow, RowChunk, Source
from ._formats import Format, assemble, format_of, open_source, part_format
from ._jsonl import encode_jsonl, parse_lines, parse_rows

__all__ = [
    "BAD_ROW",
    "BadRow",
    "Format",
    "RowChunk",
    "Source",
    "assemble",
    "concat_tables",
    "encode_jsonl",
    "format_of",
    "open_source",
    "parse_lines",
    "parse_rows",
    "part_format",
    "records_to_table",
    "write_parquet",
]
