"""Output rows as Arrow tables: Parquet part files, assembled into one CSV or Parquet file.

Parts may disagree on a column's type (a column of nulls in one part, of ints in the next)
or on the columns themselves (dict outputs with other keys): assembly unifies their schemas
and fills missing columns with nulls.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from ._chunk import BadRow

_JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


def records_to_table(
    records: Sequence[dict[str, Any]], *, flat: bool
) -> tuple[Any, dict[int, BadRow]]:
    """The records as a ``pyarrow.Table``.

    A column Arrow cannot type (mixed kinds of values, arrays of several dimensions) is
    written as text: strings as they are, other values as JSON; with ``flat`` (for CSV) so
    is every column CSV cannot hold (lists, structs, bytes, extension types such as UUID).
    Column names are text (a dict output's key ``1`` is column ``"1"``, as in JSON).

    Returns:
        The table, and offset -> why, for records that cannot be written (left out).
    """
    import pyarrow as pa

    names: dict[Any, None] = {}
    for record in records:
        names.update(dict.fromkeys(record))
    columns: dict[str, Any] = {}
    bad: dict[int, BadRow] = {}
    for name in names:
        values = [record.get(name) for record in records]
        try:
            column = pa.array(values, from_pandas=False)
            if flat and _not_csv(column.type):
                raise pa.ArrowInvalid("CSV holds these values as text")
        except (
            pa.ArrowInvalid,
            pa.ArrowTypeError,
            pa.ArrowNotImplementedError,
            TypeError,
            OverflowError,  # an int past 64 bits
            UnicodeEncodeError,  # a string that is not valid text (a lone surrogate)
        ):
            column = pa.array(_texts(values, bad), type=pa.string())
        columns.setdefault(name if isinstance(name, str) else str(name), column)
    table = pa.table(columns) if columns else pa.table({})
    if bad:
        keep = [offset for offset in range(len(records)) if offset not in bad]
        table = table.take(pa.array(keep, type=pa.int64()))
    return table, bad


def _not_csv(type_: Any) -> bool:
    import pyarrow as pa

    return bool(
        pa.types.is_list(type_)
        or pa.types.is_large_list(type_)
        or pa.types.is_fixed_size_list(type_)
        or pa.types.is_struct(type_)
        or pa.types.is_map(type_)
        or pa.types.is_binary(type_)  # CSV needs text: bytes that are not UTF-8 cannot go
        or pa.types.is_large_binary(type_)
        or pa.types.is_fixed_size_binary(type_)
        or isinstance(type_, pa.BaseExtensionType)
    )


def _texts(values: list[Any], bad: dict[int, BadRow]) -> list[str | None]:
    """Each value as text (strings as they are, bytes decoded, the rest as JSON, or the
    string JSON makes of it); values that have none are ``bad`` and left out."""
    texts: list[str | None] = []
    for offset, value in enumerate(values):
        try:
            texts.append(_text(value))
        except (TypeError, UnicodeError) as error:
            bad.setdefault(offset, BadRow(type(error).__name__, f"output is not text: {error}"))
            texts.append(None)
    return texts


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        value.encode()  # raises for a string no file can hold
        return value
    if isinstance(value, bytes):
        return value.decode()
    text = orjson.dumps(value, option=_JSON_OPTIONS)
    if text.startswith(b'"'):  # a value JSON writes as a string (UUID, datetime): that string
        loaded: str = orjson.loads(text)
        return loaded
    return text.decode()


def write_parquet(table: Any, file: BinaryIO) -> None:
    """Writes ``table`` as one Parquet file to an open binary file."""
    import pyarrow.parquet as pq

    pq.write_table(table, file, compression="zstd")


def assemble_tables(parts: Sequence[Path], file: BinaryIO, *, output_format: str) -> int:
    """Streams the Parquet ``parts``, in order, into one CSV or Parquet file.

    Returns:
        The number of rows written.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = unified_schema([pq.read_schema(part) for part in parts])
    writer = _writer(file, schema, output_format)
    rows = 0
    try:
        for part in parts:
            for batch in pq.ParquetFile(part).iter_batches(use_threads=False):
                table = _conform(pa.Table.from_batches([batch]), schema)
                writer.write_table(table)
                rows += table.num_rows
    finally:
        writer.close()
    return rows


def concat_tables(tables: Sequence[Any]) -> Any:
    """One table of ``tables``' rows, under their :func:`unified_schema`."""
    import pyarrow as pa

    # A column of nulls keeps its null type: a later part may tell what it holds.
    schema = unified_schema([table.schema for table in tables], null_as_text=False)
    return pa.concat_tables([_conform(table, schema) for table in tables])


def unified_schema(schemas: Sequence[Any], *, null_as_text: bool = True) -> Any:
    """Every column of ``schemas``, each with a type that holds all of its values: the
    wider type (int and float: float; null and int: int), or text where none does (int
    and string values of one column are written as text). A column null everywhere is
    text with ``null_as_text`` (a type every writer takes)."""
    import pyarrow as pa

    fields: dict[str, Any] = {}
    for schema in schemas:
        for field in schema:
            known = fields.get(field.name)
            if known is None or known.type == field.type:
                fields.setdefault(field.name, field)
                continue
            try:
                pair = [pa.schema([known]), pa.schema([field])]
                fields[field.name] = pa.unify_schemas(pair, promote_options="permissive")[0]
            except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
                fields[field.name] = pa.field(field.name, pa.string())
    if not null_as_text:
        return pa.schema(list(fields.values()))
    return pa.schema([_concrete(field) for field in fields.values()])


def _concrete(field: Any) -> Any:
    import pyarrow as pa

    # A column that is null everywhere still needs a writable type.
    return field.with_type(pa.string()) if pa.types.is_null(field.type) else field


def _conform(table: Any, schema: Any) -> Any:
    import pyarrow as pa

    present = set(table.column_names)  # a set: a wide table's columns are many
    columns = [
        _cast(table.column(f.name), f.type)
        if f.name in present
        else pa.nulls(table.num_rows, type=f.type)
        for f in schema
    ]
    return pa.Table.from_arrays(columns, schema=schema)


def _cast(column: Any, type_: Any) -> Any:
    import pyarrow as pa

    if column.type == type_:
        return column
    try:
        return column.cast(type_)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        # Only to text, for columns whose values no one type holds, as records_to_table
        # writes them; bytes that are not UTF-8 (a Parquet part holds them) with U+FFFD.
        values = column.to_pylist()
        texts = [v.decode(errors="replace") if isinstance(v, bytes) else _text(v) for v in values]
        return pa.array(texts, type=type_)


def _writer(file: BinaryIO, schema: Any, output_format: str) -> Any:
    if output_format == "parquet":
        import pyarrow.parquet as pq

        return pq.ParquetWriter(file, schema, compression="zstd")
    from pyarrow import csv

    return csv.CSVWriter(file, schema)
