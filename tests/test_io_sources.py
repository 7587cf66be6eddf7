"""Readers of JSONL, CSV and Parquet: chunks of whole rows, bad rows kept in place, and
positions from which a reopened reader goes on with exactly the rows that follow."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from asyncml.io import (
    BAD_ROW,
    RowChunk,
    Source,
    format_of,
    open_source,
    parse_lines,
    parse_rows,
)
from asyncml.io._csv import record_end


def read_all(source: Source) -> list[RowChunk]:
    chunks = []
    try:
        while (chunk := source.read()) is not None:
            chunks.append(chunk)
    finally:
        source.close()
    return chunks


def rows_of(chunks: list[RowChunk]) -> list[Any]:
    return [row for chunk in chunks for row in chunk.rows]


def assert_resumes_anywhere(path: Path, chunk_size: int) -> None:
    """Reopening at any chunk's position yields exactly the rows after that chunk."""
    chunks = read_all(open_source(path, chunk_size=chunk_size))
    every = rows_of(chunks)
    for chunk in chunks:
        rest = read_all(
            open_source(
                path, position=chunk.position, first_row=chunk.end_row, chunk_size=chunk_size
            )
        )
        assert rows_of(rest) == every[chunk.end_row :]
        if rest:
            assert rest[0].first_row == chunk.end_row


def test_formats_come_from_extensions() -> None:
    assert [format_of(p) for p in ("a.jsonl", "b.NDJSON", "c.csv", "d.parquet", "-")] == [
        "jsonl", "jsonl", "csv", "parquet", "jsonl",
    ]  # fmt: skip
    with pytest.raises(ValueError, match=r"unknown format '\.txt'"):
        format_of("rows.txt")


def test_jsonl_lines_parse_skipping_blanks_and_keeping_bad_rows_in_place() -> None:
    rows, bad = parse_lines(b'{"a": 1}\n\n  \n[1, 2]\n{oops\n7\n')
    assert rows == [{"a": 1}, [1, 2], BAD_ROW, 7]
    assert list(bad) == [2]
    assert bad[2].error == "JSONDecodeError"
    assert bad[2].message.startswith("malformed JSON")


def test_unparsed_jsonl_rows_are_the_lines_that_parsing_would_number(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b'{"a": 1}\n\n  \r\n[1, 2]\n{oops\n7')
    chunks = read_all(open_source(path, parse=False, chunk_size=9))
    assert rows_of(chunks) == [b'{"a": 1}', b"[1, 2]", b"{oops", b"7"]
    parsed = read_all(open_source(path, chunk_size=9))
    assert [(c.first_row, c.end_row, c.position) for c in chunks] == [
        (c.first_row, c.end_row, c.position) for c in parsed
    ]
    assert parse_rows(rows_of(chunks))[0] == rows_of(parsed)


def test_jsonl_in_tiny_blocks_gives_the_same_rows_and_resumes_at_every_chunk(
    tmp_path: Path,
) -> None:
    path = tmp_path / "rows.jsonl"
    lines = [orjson.dumps({"i": i, "text": "x" * (i % 7)}) for i in range(40)]
    path.write_bytes(b"\n".join(lines))  # no newline after the last line
    whole = read_all(open_source(path))
    assert rows_of(whole) == [{"i": i, "text": "x" * (i % 7)} for i in range(40)]
    assert whole[-1].position == path.stat().st_size
    assert_resumes_anywhere(path, chunk_size=23)  # blocks shorter than some lines


def test_csv_keeps_quoted_newlines_and_numbers_bad_records(tmp_path: Path) -> None:
    path = tmp_path / "rows.csv"
    path.write_bytes(b'name,n\nann,1\n"multi\nline ""quoted""",2\nshort\nbob,4\nx,5,extra\n')
    chunks = read_all(open_source(path))
    assert rows_of(chunks) == [
        {"name": "ann", "n": 1},
        {"name": 'multi\nline "quoted"', "n": 2},
        BAD_ROW,
        {"name": "bob", "n": 4},
        BAD_ROW,
    ]
    bad = {**chunks[0].bad}
    assert sorted(bad) == [2, 4]
    assert bad[2].message == "expected 2 columns, got 1"


def test_csv_in_tiny_blocks_resumes_at_every_chunk(tmp_path: Path) -> None:
    path = tmp_path / "rows.csv"
    body = "".join(f'{i},"note\n{i}"\n' for i in range(30))
    path.write_text("id,note\n" + body)
    rows = rows_of(read_all(open_source(path, chunk_size=16)))
    assert rows == [{"id": i, "note": f"note\n{i}"} for i in range(30)]
    assert_resumes_anywhere(path, chunk_size=16)


def test_a_record_ends_only_at_a_newline_outside_quotes() -> None:
    assert record_end(b'a,b\n"x\ny') == 4
    assert record_end(b'"x\ny"\n') == 6
    assert record_end(b'"open\n') == 0
    assert record_end(b'still open"\nnext\n', odd=True) == 17  # the quote closes one
    assert record_end(b"x\n", odd=True) == 0


def test_a_lone_quote_in_a_csv_value_is_read_as_pyarrow_reads_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncml.io._csv

    monkeypatch.setattr(asyncml.io._csv, "CARRY_LIMIT", 256)
    path = tmp_path / "screens.csv"
    names = [f'{i}" screen' if i == 3 else f"screen {i}" for i in range(100)]
    path.write_text("name,size\n" + "".join(f"{n},{i}\n" for i, n in enumerate(names)))
    chunks = read_all(open_source(path, chunk_size=16))
    assert rows_of(chunks) == [{"name": n, "size": i} for i, n in enumerate(names)]
    assert max(len(chunk.rows) for chunk in chunks) < 30  # the carry was cut, not kept
    assert_resumes_anywhere(path, chunk_size=16)


def test_a_csv_value_that_is_not_utf8_fails_its_row_alone(tmp_path: Path) -> None:
    path = tmp_path / "names.csv"
    records = [(b"caf\xe9" if i == 5 else b"n%d" % i) + b",%d\n" % i for i in range(10)]
    path.write_bytes(b"name,size\n" + b"".join(records) + b"a,b,c\n")
    (chunk,) = read_all(open_source(path))
    assert [row if row is BAD_ROW else row["name"] for row in chunk.rows] == [
        *(f"n{i}" for i in range(5)), BAD_ROW, *(f"n{i}" for i in range(6, 10)), BAD_ROW
    ]  # fmt: skip
    assert chunk.bad[5].message == "field 'name' is not UTF-8 text"
    assert chunk.bad[10].error == "CSVRowError"


def test_nanosecond_times_in_parquet_are_read_to_the_microsecond(tmp_path: Path) -> None:
    import datetime

    path = tmp_path / "times.parquet"
    nanoseconds = [1_577_934_245_000_001_001, 1_577_934_245_000_002_999]
    pq.write_table(pa.table({"t": pa.array(nanoseconds, pa.timestamp("ns"))}), path)
    rows = rows_of(read_all(open_source(path)))
    assert [row["t"].microsecond for row in rows] == [1, 2]
    assert isinstance(rows[0]["t"], datetime.datetime)


def test_a_jsonl_byte_order_mark_is_not_part_of_the_first_row(tmp_path: Path) -> None:
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + b'{"v": 0}\n{"v": 1}\n')
    chunks = read_all(open_source(path, chunk_size=8))
    assert rows_of(chunks) == [{"v": 0}, {"v": 1}]
    assert not any(chunk.bad for chunk in chunks)
    assert_resumes_anywhere(path, chunk_size=8)


def test_parquet_resumes_inside_a_row_group(tmp_path: Path) -> None:
    path = tmp_path / "rows.parquet"
    pq.write_table(
        pa.table({"v": list(range(50)), "w": [str(i) for i in range(50)]}), path, row_group_size=8
    )
    source = open_source(path, chunk_size=5)
    assert (source.unit, source.total) == ("rows", 50)
    chunks = read_all(source)
    assert [row["v"] for row in rows_of(chunks)] == list(range(50))
    rest = read_all(open_source(path, position=19, first_row=19, columns=["v"]))
    assert rows_of(rest) == [{"v": i} for i in range(19, 50)]
    assert rest[0].first_row == 19
    assert_resumes_anywhere(path, chunk_size=3)


def test_a_file_that_is_not_parquet_is_a_value_error(tmp_path: Path) -> None:
    path = tmp_path / "fake.parquet"
    path.write_text("not parquet")
    with pytest.raises(ValueError, match="not a readable Parquet file"):
        open_source(path)
