"""``asyncml run`` in-process: formats, ids and fields, dead letters, failure limits,
progress lines, the errors that exit 2, and the journal's refusals. Crash tests are in
test_job_crash.py."""

from __future__ import annotations

import contextlib
import io
import re
import sqlite3
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner, Result
from rich.console import Console

from asyncml.cli import main
from asyncml.cli.run import _ProgressLog
from asyncml.job import JobProgress

DOUBLE = """
calls = []

def double(batch):
    calls.extend(batch)
    return [2 * v for v in batch]

def mixed(batch):
    return [{"label": v if v < 10 else f"big-{v}"} for v in batch]

def awkward(batch):
    import uuid
    from collections import OrderedDict

    odd = {2: 2**64, 3: "lone \\udcff", 4: b"\\xff"}
    return [
        OrderedDict(v=odd.get(v, v), key=f"k{v}" if v != 5 else v, u=uuid.UUID(int=v))
        for v in batch
    ]


def optional(batch):
    return [{"score": v if v >= 20 else None} for v in batch]


def numpy_mix(batch):
    import numpy as np

    return [np.int64(7) if v % 3 == 0 else (2.5 if v % 3 == 1 else "x") for v in batch]


def strange_error(batch):
    if 3 in batch:
        raise ValueError("bad name \\udcff here")
    return list(batch)


async def adouble(batch):
    return [2 * v for v in batch]


def by_row(batch):
    calls.extend(row["v"] for row in batch)
    out = []
    for row in batch:
        if row["v"] == 13:
            raise ValueError("unlucky 13")
        out.append({"twice": 2 * row["v"], "label": f"n{row['v']}"})
    return out
"""


def model_ref(tmp_path: Path, name: str = "double", source: str = DOUBLE) -> str:
    """A REF to a fresh model file (a new module name each time: REFs import by name)."""
    path = tmp_path / f"job_model_{uuid.uuid4().hex[:10]}.py"
    path.write_text(source)
    return f"{path}:{name}"


def calls_of(ref: str) -> list[Any]:
    import sys

    module = Path(ref.rpartition(":")[0]).stem
    calls: list[Any] = sys.modules[module].calls
    return calls


def committed_rows(journal: Path) -> int:
    with contextlib.closing(sqlite3.connect(journal)) as db:
        rows: int = db.execute("SELECT max(next_row) FROM commits").fetchone()[0]
    return rows


#: Variables that would make rich take CliRunner's streams for a terminal.
NO_TERMINAL: dict[str, str | None] = {"FORCE_COLOR": None, "TTY_COMPATIBLE": None}


def invoke(*args: str | Path, input: bytes | None = None) -> Result:
    return CliRunner(env=NO_TERMINAL).invoke(main, ["run", *map(str, args)], input=input)


def write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    table = pa.Table.from_pylist(rows)
    if path.suffix == ".jsonl":
        path.write_bytes(b"".join(orjson.dumps(row) + b"\n" for row in rows))
    elif path.suffix == ".csv":
        pacsv.write_csv(table, path)
    else:
        pq.write_table(table, path, row_group_size=7)


def read_rows(path: Path) -> list[dict[str, Any]]:
    if path.suffix == ".jsonl":
        return [orjson.loads(line) for line in path.read_bytes().splitlines()]
    if path.suffix == ".csv":
        rows: list[dict[str, Any]] = pacsv.read_csv(path).to_pylist()
        return rows
    parquet_rows: list[dict[str, Any]] = pq.read_table(path).to_pylist()
    return parquet_rows


ROWS = [{"v": i, "name": f"n{i}"} for i in range(25)]


@pytest.mark.parametrize("source", ["jsonl", "csv", "parquet"])
@pytest.mark.parametrize("target", ["jsonl", "csv", "parquet"])
def test_every_format_round_trips(tmp_path: Path, source: str, target: str) -> None:
    given, output = tmp_path / f"in.{source}", tmp_path / f"out.{target}"
    write_rows(given, ROWS)
    result = invoke(
        model_ref(tmp_path), "-i", given, "-o", output, "--field", "v", "--chunk-size", "9"
    )
    assert result.exit_code == 0, result.output
    assert read_rows(output) == [{"id": i, "prediction": 2 * i} for i in range(25)]
    assert "25 rows" in result.stderr
    assert "25 ok, 0 failed, 0 resumed" in result.stderr
    leftovers = {p.name for p in tmp_path.iterdir()} - {given.name, output.name}
    assert {name for name in leftovers if not name.endswith(".py")} == set()


@pytest.mark.parametrize("target", ["csv", "parquet"])
def test_a_column_of_ints_in_one_part_and_text_in_another_becomes_text(
    tmp_path: Path, target: str
) -> None:
    given, output = tmp_path / "in.jsonl", tmp_path / f"out.{target}"
    write_rows(given, ROWS[:15])
    options = ["--field", "v", "--chunk-size", "40", "--commit-every", "1"]
    result = invoke(model_ref(tmp_path, "mixed"), "-i", given, "-o", output, *options)
    assert result.exit_code == 0, result.output
    labels = [row["label"] for row in read_rows(output)]
    assert labels == [*map(str, range(10)), *(f"big-{v}" for v in range(10, 15))]


def test_stdin_to_stdout(tmp_path: Path) -> None:
    lines = b"".join(orjson.dumps(row) + b"\n" for row in ROWS[:5])
    result = invoke(model_ref(tmp_path), "-i", "-", "-o", "-", "--field", "v", input=lines)
    assert result.exit_code == 0, result.stderr
    assert [orjson.loads(line) for line in result.stdout_bytes.splitlines()] == [
        {"id": i, "prediction": 2 * i} for i in range(5)
    ]


@pytest.mark.parametrize("target", ["out.parquet", "out.csv", "out.jsonl"])
def test_outputs_a_format_cannot_hold_are_dead_letters_and_the_rest_is_written(
    tmp_path: Path, target: str
) -> None:
    given, output = tmp_path / "in.jsonl", tmp_path / target
    write_rows(given, ROWS[:8])
    result = invoke(model_ref(tmp_path, "awkward"), "-i", given, "-o", output, "--field", "v")
    assert result.exit_code == 0, result.stderr
    dead = read_rows(tmp_path / f"{target}.dead.jsonl")
    # Beside ints and strings, a value goes as text: bytes that are not UTF-8 have none.
    assert [(row["row"], row["stage"]) for row in dead] == [
        (2, "output"),
        (3, "output"),
        (4, "output"),
    ]
    rows = {row["id"]: row for row in read_rows(output)}
    assert rows[0]["key"] == "k0"  # strings stay as they are beside other kinds of value
    assert str(rows[5]["key"]) == "5"
    assert str(rows[1]["u"]).endswith("-000000000001")


def test_a_column_null_through_a_whole_commit_keeps_its_type(tmp_path: Path) -> None:
    given, output = tmp_path / "in.jsonl", tmp_path / "out.parquet"
    write_rows(given, ROWS)
    options: list[str | Path] = ["-i", given, "-o", output, "--field", "v", "--chunk-size", "64"]
    result = invoke(model_ref(tmp_path, "optional"), *options, "--commit-every", "5")
    assert result.exit_code == 0, result.stderr
    table = pq.read_table(output)
    assert table.schema.field("score").type == pa.int64()
    assert table.column("score").to_pylist() == [None] * 20 + [20, 21, 22, 23, 24]


def test_a_corrupt_parquet_input_exits_2_with_one_line(tmp_path: Path) -> None:
    given = tmp_path / "in.parquet"
    pq.write_table(pa.table({"v": list(range(100))}), given, row_group_size=10, compression="none")
    offset = pq.ParquetFile(given).metadata.row_group(3).column(0).data_page_offset
    data = bytearray(given.read_bytes())
    data[offset : offset + 8] = b"\xff" * 8
    given.write_bytes(bytes(data))
    result = invoke(model_ref(tmp_path), "-i", given, "-o", tmp_path / "o.jsonl", "--field", "v")
    assert result.exit_code == 2
    assert result.stderr.startswith(f"asyncml run: error: cannot read {str(given)!r}")
    assert result.stderr.count("\n") == 1


def test_a_file_ref_spelled_another_way_resumes_the_same_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ref = model_ref(tmp_path)
    options = stop_early(tmp_path, ref)
    monkeypatch.chdir(tmp_path)
    relative = "./" + Path(ref).name  # the same file, named from its folder
    result = invoke(relative, *options, "--resume")
    assert result.exit_code == 0, result.stderr


def test_an_async_model_runs_inline_and_a_thread_executor_refuses_it(tmp_path: Path) -> None:
    given, output = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_rows(given, ROWS[:3])
    ref = model_ref(tmp_path, "adouble")
    refused = invoke(ref, "-i", given, "-o", output, "--field", "v", "--executor", "thread")
    assert refused.exit_code == 2
    assert "executor='inline'" in refused.stderr
    result = invoke(ref, "-i", given, "-o", output, "--field", "v", "--executor", "inline")
    assert result.exit_code == 0, result.stderr
    assert read_rows(output) == [{"id": i, "prediction": 2 * i} for i in range(3)]


def test_id_field_names_the_id_and_dict_outputs_become_fields(tmp_path: Path) -> None:
    given, output = tmp_path / "in.jsonl", tmp_path / "out.parquet"
    write_rows(given, [{"key": f"k{i}", "v": i} for i in range(3)])
    result = invoke(model_ref(tmp_path, "by_row"), "-i", given, "-o", output, "--id-field", "key")
    assert result.exit_code == 0, result.output
    assert read_rows(output) == [
        {"key": f"k{i}", "twice": 2 * i, "label": f"n{i}"} for i in range(3)
    ]


def test_bad_rows_go_to_the_dead_letter_file_and_the_job_goes_on(tmp_path: Path) -> None:
    given, output = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    given.write_bytes(
        b'{"key": "a", "v": 1}\n'
        b"{not json\n"
        b'{"key": "c"}\n'
        b'{"v": 3}\n'
        b"[1, 2]\n"
        b'{"key": "f", "v": 13}\n'
        b'{"key": "g", "v": 4}\n'
    )
    ref = model_ref(tmp_path, "by_row")
    result = invoke(ref, "-i", given, "-o", output, "--id-field", "key")
    assert result.exit_code == 0, result.output
    assert read_rows(output) == [
        {"key": "a", "twice": 2, "label": "n1"},
        {"key": "g", "twice": 8, "label": "n4"},
    ]
    dead = read_rows(tmp_path / "out.jsonl.dead.jsonl")
    assert dead == [
        {"row": 1, "id": None, "stage": "parse", "error": "JSONDecodeError",
         "message": dead[0]["message"]},
        {"row": 2, "id": "c", "stage": "model", "error": "KeyError", "message": "'v'"},
        {"row": 3, "id": None, "stage": "input", "error": "KeyError",
         "message": "row has no id field 'key'"},
        {"row": 4, "id": None, "stage": "input", "error": "TypeError",
         "message": "row is a list, not an object with fields"},
        {"row": 5, "id": "f", "stage": "model", "error": "ValueError", "message": "unlucky 13"},
    ]  # fmt: skip
    assert dead[0]["message"].startswith("malformed JSON: ")
    assert "5 failed" in result.stderr
    assert "dead letters: " in result.stderr


def test_a_missing_field_is_a_dead_letter(tmp_path: Path) -> None:
    given, output = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    given.write_bytes(b'{"v": 1}\n{"w": 2}\n')
    result = invoke(model_ref(tmp_path), "-i", given, "-o", output, "--field", "v")
    assert result.exit_code == 0, result.output
    assert read_rows(tmp_path / "out.jsonl.dead.jsonl") == [
        {
            "row": 1,
            "id": 1,
            "stage": "input",
            "error": "KeyError",
            "message": "row has no field 'v'",
        }
    ]


def test_max_failures_stops_with_exit_1_and_resume_does_not_recompute(tmp_path: Path) -> None:
    given, output = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    given.write_bytes(b"".join(b"{bad\n" if i % 10 == 9 else b'{"v": %d}\n' % i for i in range(60)))
    ref = model_ref(tmp_path)
    options: list[str | Path] = [
        "-i",
        given,
        "-o",
        output,
        "--field",
        "v",
        "--chunk-size",
        "50",
        "--commit-every",
        "1",
    ]
    stopped = invoke(ref, *options, "--max-failures", "2")
    assert stopped.exit_code == 1
    assert stopped.stderr.count("\n") == 1
    assert "stopped: 3 of " in stopped.stderr
    assert "--max-failures" in stopped.stderr
    assert not output.exists()
    # The message points to the dead letters committed so far, which are there to read.
    assert [row["row"] for row in read_rows(tmp_path / "out.jsonl.dead.jsonl")] == [9, 19, 29]
    committed = committed_rows(tmp_path / "out.jsonl.journal.sqlite")
    assert 0 < committed < 60
    again = invoke(ref, *options, "--max-failures", "0.2", "--resume")
    assert again.exit_code == 0, again.output
    counts = Counter(calls_of(ref))
    assert set(counts) == {i for i in range(60) if i % 10 != 9}
    assert all(counts[i] == 1 for i in counts if i < committed)  # committed: never again
    assert [row["id"] for row in read_rows(output)] == [i for i in range(60) if i % 10 != 9]
    assert len(read_rows(tmp_path / "out.jsonl.dead.jsonl")) == 6
    assert "resumed" in again.stderr


def test_a_failure_fraction_stops_the_job(tmp_path: Path) -> None:
    given, output = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    given.write_bytes(b"{bad\n" * 3 + b'{"v": 1}\n' * 7)
    result = invoke(
        model_ref(tmp_path), "-i", given, "-o", output, "--field", "v", "--max-failures", "0.1"
    )
    assert result.exit_code == 1
    assert "(10.0% of rows)" in result.stderr


PROGRESS_LINE = re.compile(
    r"asyncml run: (?P<rows>[\d,]+)(?: / (?P<total>[\d,]+))? rows \((?P<percent>[\d.]+)%\), "
    r"(?P<failed>[\d,]+) failed; [\d,]+ rows/s; ETA \d+:\d\d:\d\d"
)


def progress_lines(stderr: str) -> list[re.Match[str]]:
    return [m for line in stderr.splitlines() if (m := PROGRESS_LINE.fullmatch(line))]


@pytest.mark.parametrize(("source", "chunk_size"), [("jsonl", "100"), ("parquet", "10")])
def test_without_a_terminal_progress_is_logged_as_lines(
    tmp_path: Path, source: str, chunk_size: str
) -> None:
    given, output = tmp_path / f"in.{source}", tmp_path / "out.jsonl"
    write_rows(given, [{"v": i} for i in range(60)])
    options = ["--chunk-size", chunk_size, "--progress-interval", "0"]
    result = invoke(model_ref(tmp_path, "by_row"), "-i", given, "-o", output, *options)
    assert result.exit_code == 0, result.output
    lines = progress_lines(result.stderr)
    assert len(lines) >= 5  # interval 0: one line per chunk, after the first report
    assert len(result.stderr.splitlines()) == len(lines) + 3  # and the summary's 3 lines
    rows = [int(line["rows"].replace(",", "")) for line in lines]
    assert rows == sorted(rows)
    assert rows[0] > 0
    assert rows[-1] == 60
    assert (lines[-1]["percent"], lines[-1]["failed"]) == ("100.0", "1")  # v == 13 fails
    # Parquet knows its row count; JSONL only its size in bytes, which the percent is of.
    assert {line["total"] for line in lines} == {"60" if source == "parquet" else None}


@pytest.mark.parametrize("options", [["--no-progress", "--progress-interval", "0"], []])
def test_no_progress_lines_with_no_progress_or_within_the_interval(
    tmp_path: Path, options: list[str]
) -> None:
    given, output = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_rows(given, ROWS)
    result = invoke(model_ref(tmp_path), "-i", given, "-o", output, "--field", "v", *options)
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines()[0].startswith("asyncml run: 25 rows: 25 ok")
    assert len(result.stderr.splitlines()) == 2  # the summary only; the default is 10 s


def test_progress_lines_count_speed_from_where_a_resumed_run_starts() -> None:
    now, logged = 100.0, io.StringIO()
    log = _ProgressLog(Console(file=logged), interval=10, clock=lambda: now)

    def report(at: float, rows: int, failed: int = 0) -> None:
        nonlocal now
        now = at
        log.update(JobProgress(rows, rows - failed, failed, 1_000, rows, 4_000, "rows"))

    report(100, 1_000)  # the run starts where the journal left off: 1,000 rows done
    report(105, 1_500)  # within the interval: no line
    report(110, 2_000, failed=3)
    report(115, 2_500, failed=3)
    report(121, 3_200, failed=4)
    # 1,000 rows in 10 s, not 2,000: rows done before the resume are not this run's speed.
    assert logged.getvalue().splitlines() == [
        "asyncml run: 2,000 / 4,000 rows (50.0%), 3 failed; 100 rows/s; ETA 0:00:20",
        "asyncml run: 3,200 / 4,000 rows (80.0%), 4 failed; 105 rows/s; ETA 0:00:08",
    ]


def test_progress_lines_of_a_byte_sized_input_show_its_percent_read() -> None:
    logged = io.StringIO()
    log = _ProgressLog(Console(file=logged), interval=0, clock=iter([0.0, 4.0]).__next__)
    log.update(JobProgress(0, 0, 0, 0, 0, 10_000, "bytes"))
    log.update(JobProgress(250, 250, 0, 0, 2_500, 10_000, "bytes"))
    assert logged.getvalue() == "asyncml run: 250 rows (25.0%), 0 failed; 62 rows/s; ETA 0:00:12\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-i", "{dir}/missing.jsonl", "-o", "{dir}/out.jsonl"], "does not exist"),
        (["-i", "{dir}/in.jsonl", "-o", "{dir}/no/such/out.jsonl"], "does not exist"),
        (["-i", "{dir}/in.jsonl", "-o", "{dir}/blocked.jsonl"], "cannot write next to"),
        (["-i", "{dir}/in.jsonl", "-o", "{dir}/out.txt"], "unknown format '.txt'"),
        (["-i", "{dir}/in.jsonl", "-o", "{dir}/in.jsonl"], "is the input file"),
        (
            ["-i", "{dir}/in.jsonl", "-o", "{dir}/o.jsonl", "--dead-letter", "{dir}/in.jsonl"],
            "the dead-letter file '{dir}/in.jsonl' is also the job's input",
        ),
        (
            ["-i", "{dir}/in.jsonl", "-o", "{dir}/o.jsonl", "--journal", "{dir}/o.jsonl"],
            "the journal '{dir}/o.jsonl' is also the job's output",
        ),
        (
            ["-i", "{dir}/in.jsonl", "-o", "-", "--dead-letter", "{dir}/no/dead.jsonl"],
            "cannot write the dead-letter file",
        ),
        (["-i", "{dir}/in.jsonl", "-o", "{dir}/out.jsonl", "--max-failures", "x"], "neither"),
        (["-i", "{dir}/in.jsonl", "-o", "{dir}/o.jsonl", "--chunk-size", "9" * 20], "range"),
        (["-i", "{dir}/in.jsonl", "-o", "{dir}/o.jsonl", "--workers", "9" * 20], "range"),
        (["-i", "{dir}/in.jsonl", "-o", "{dir}/o.jsonl", "--progress-interval", "nan"], "finite"),
    ],
)
def test_bad_paths_and_options_exit_2_with_one_line(
    tmp_path: Path, args: list[str], message: str
) -> None:
    write_rows(tmp_path / "in.jsonl", ROWS[:2])
    (tmp_path / "blocked.jsonl.parts").write_text("a file where the parts folder goes")
    result = invoke(model_ref(tmp_path), *[a.format(dir=tmp_path) for a in args])
    assert result.exit_code == 2, result.output
    assert message.format(dir=tmp_path) in result.stderr
    assert "Traceback" not in result.stderr
    assert read_rows(tmp_path / "in.jsonl") == ROWS[:2]
    if message not in ("neither", "range", "finite"):  # click's usage errors: a few lines
        assert result.stderr.count("\n") == 1


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("no_such_module_zz:f", "no module named 'no_such_module_zz'"),
        ("{dir}/nope.py:f", "no such file"),
        ("json:nope", "has no attribute 'nope'"),
        ("json:__name__", "cannot load the model 'json:__name__': expected a Model"),
    ],
)
def test_a_ref_that_does_not_import_exits_2_with_one_line(
    tmp_path: Path, ref: str, message: str
) -> None:
    write_rows(tmp_path / "in.jsonl", ROWS[:2])
    result = invoke(
        ref.format(dir=tmp_path), "-i", tmp_path / "in.jsonl", "-o", tmp_path / "o.jsonl"
    )
    assert result.exit_code == 2
    assert message in result.stderr
    assert result.stderr.count("\n") == 1


def stop_early(tmp_path: Path, ref: str) -> list[str | Path]:
    """Leaves an unfinished job behind (stopped by --max-failures) and returns its options."""
    given, output = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    given.write_bytes(b'{"v": 1}\n{bad\n' + b"".join(b'{"v": %d}\n' % i for i in range(40)))
    options: list[str | Path] = ["-i", given, "-o", output, "--field", "v", "--chunk-size", "64"]
    assert invoke(ref, *options, "--max-failures", "0", "--commit-every", "1").exit_code == 1
    return options


def test_an_unfinished_job_is_neither_overwritten_nor_resumed_unasked(tmp_path: Path) -> None:
    ref = model_ref(tmp_path)
    options = stop_early(tmp_path, ref)
    result = invoke(ref, *options)
    assert result.exit_code == 2
    assert "holds an unfinished job: add --resume to continue it, or --force" in result.stderr
    assert invoke(ref, *options, "--resume", "--force").exit_code == 2


def test_a_run_that_cannot_journal_leaves_an_unfinished_job_alone(tmp_path: Path) -> None:
    ref = model_ref(tmp_path)
    options = stop_early(tmp_path, ref)
    output = tmp_path / "out.jsonl"
    parts = sorted((tmp_path / "out.jsonl.parts").iterdir())
    result = invoke(ref, "-i", "-", "-o", output, "--field", "v", input=b'{"v": 1}\n')
    assert result.exit_code == 2
    assert "holds an unfinished job, which this run (without a journal)" in result.stderr
    assert sorted((tmp_path / "out.jsonl.parts").iterdir()) == parts
    assert invoke(ref, *options, "--resume").exit_code == 0
    assert len(read_rows(output)) == 41


def test_a_fresh_run_leaves_parts_of_a_journal_kept_elsewhere_alone(tmp_path: Path) -> None:
    ref = model_ref(tmp_path)
    options = stop_early(tmp_path, ref)
    (tmp_path / "out.jsonl.journal.sqlite").rename(tmp_path / "elsewhere.sqlite")
    parts = sorted((tmp_path / "out.jsonl.parts").iterdir())
    result = invoke(ref, *options)
    assert result.exit_code == 2
    assert "cannot start:" in result.stderr
    assert sorted((tmp_path / "out.jsonl.parts").iterdir()) == parts


def test_outputs_keep_their_types_and_every_dead_letter_is_written(tmp_path: Path) -> None:
    given, output = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_rows(given, ROWS[:6])
    result = invoke(model_ref(tmp_path, "numpy_mix"), "-i", given, "-o", output, "--field", "v")
    assert result.exit_code == 0, result.stderr
    assert [row["prediction"] for row in read_rows(output)] == [7, 2.5, "x"] * 2
    result = invoke(model_ref(tmp_path, "strange_error"), "-i", given, "-o", output, "--field", "v")
    assert result.exit_code == 0, result.stderr
    (letter,) = read_rows(tmp_path / "out.jsonl.dead.jsonl")
    assert (letter["row"], letter["message"]) == (3, "bad name \\udcff here")


def test_an_id_field_named_prediction_and_a_csv_header_naming_twice_are_refused(
    tmp_path: Path,
) -> None:
    given = tmp_path / "in.jsonl"
    write_rows(given, ROWS[:2])
    result = invoke(
        model_ref(tmp_path), "-i", given, "-o", tmp_path / "o.jsonl", "--id-field", "prediction"
    )
    assert result.exit_code == 2
    assert "--id-field 'prediction' would share its field" in result.stderr
    doubled = tmp_path / "doubled.csv"
    doubled.write_text("a,a,b\n1,2,3\n")
    result = invoke(model_ref(tmp_path), "-i", doubled, "-o", tmp_path / "o2.jsonl")
    assert result.exit_code == 2
    assert "the CSV header names 'a' more than once" in result.stderr
    assert result.stderr.count("\n") == 1


def test_output_paths_are_printed_as_they_are(tmp_path: Path) -> None:
    given, output = tmp_path / "in.jsonl", tmp_path / "preds[v2].jsonl"
    write_rows(given, ROWS[:2])
    result = invoke(model_ref(tmp_path), "-i", given, "-o", output, "--field", "v")
    assert result.exit_code == 0, result.stderr
    assert f"output: {output}" in result.stderr


def test_resume_without_the_jobs_journal_is_refused_when_parts_exist(tmp_path: Path) -> None:
    ref = model_ref(tmp_path)
    options = stop_early(tmp_path, ref)
    journal = tmp_path / "out.jsonl.journal.sqlite"
    journal.rename(tmp_path / "elsewhere.sqlite")
    result = invoke(ref, *options, "--resume")
    assert result.exit_code == 2
    assert "holds parts, but there is no journal at" in result.stderr
    result = invoke(ref, *options, "--resume", "--journal", tmp_path / "elsewhere.sqlite")
    assert result.exit_code == 0, result.stderr
    fresh = tmp_path / "fresh.jsonl"
    given = tmp_path / "in.jsonl"
    assert invoke(ref, "-i", given, "-o", fresh, "--field", "v", "--resume").exit_code == 0
    assert len(read_rows(fresh)) == 41  # --resume with nothing to resume starts the job


def test_a_second_run_of_a_running_job_is_refused(tmp_path: Path) -> None:
    from asyncml.job._parts import PartStore

    ref = model_ref(tmp_path)
    options = stop_early(tmp_path, ref)
    running = PartStore(tmp_path / "out.jsonl.parts")  # as the running job holds it
    try:
        result = invoke(ref, *options, "--resume")
    finally:
        running.close()
    assert result.exit_code == 2
    assert "another run of this job is writing" in result.stderr
    assert invoke(ref, *options, "--resume").exit_code == 0


def test_a_changed_input_refuses_to_resume_and_force_starts_over(tmp_path: Path) -> None:
    ref = model_ref(tmp_path)
    options = stop_early(tmp_path, ref)
    with (tmp_path / "in.jsonl").open("ab") as file:
        file.write(b'{"v": 100}\n')
    refused = invoke(ref, *options, "--resume")
    assert refused.exit_code == 2
    assert "records another job (changed: input_size, input_mtime_ns)" in refused.stderr
    assert "--force" in refused.stderr
    forced = invoke(ref, *options, "--force")
    assert forced.exit_code == 0, forced.output
    assert [row["id"] for row in read_rows(tmp_path / "out.jsonl")] == [0, *range(2, 43)]


def test_changed_model_code_refuses_to_resume(tmp_path: Path) -> None:
    ref = model_ref(tmp_path)
    options = stop_early(tmp_path, ref)
    Path(ref.rpartition(":")[0]).write_text(DOUBLE + "\n# changed\n")
    refused = invoke(ref, *options, "--resume")
    assert refused.exit_code == 2
    assert "(changed: code)" in refused.stderr


def test_leftovers_of_an_interrupted_commit_are_discarded(tmp_path: Path) -> None:
    ref = model_ref(tmp_path)
    options = stop_early(tmp_path, ref)
    parts = tmp_path / "out.jsonl.parts"
    listed = sorted(p.name for p in parts.iterdir())
    (parts / "000099.jsonl").write_bytes(b'{"id": 0, "prediction": "stale"}\n')
    (parts / "000099.dead.jsonl.tmp").write_bytes(b"half a line")
    result = invoke(ref, *options, "--resume")
    assert result.exit_code == 0, result.output
    assert not parts.exists()
    assert read_rows(tmp_path / "out.jsonl") == [
        {"id": i, "prediction": 2 * v} for i, v in [(0, 1), *((i + 2, i) for i in range(40))]
    ]
    assert listed  # the stopped job had committed parts, which were kept


def test_the_shipped_digits_job_runs(tmp_path: Path) -> None:
    import subprocess
    import sys

    root = Path(__file__).parents[1]
    done = subprocess.run(
        [sys.executable, "-c", "from asyncml.cli import main; main()", "run",
         "examples/digits/model.py:DigitsClassifier", "--field", "pixels",
         "--input", "examples/digits/digits.jsonl", "--output", str(tmp_path / "out.jsonl")],
        capture_output=True, text=True, cwd=root, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "1,799 rows: 1,797 ok, 2 failed, 0 resumed" in done.stderr
    predictions = read_rows(tmp_path / "out.jsonl")
    assert len(predictions) == 1797
    assert {row["prediction"] for row in predictions} == set(range(10))
    dead = read_rows(tmp_path / "out.jsonl.dead.jsonl")
    assert [(d["row"], d["stage"]) for d in dead] == [(1797, "parse"), (1798, "input")]


def test_a_job_that_failed_before_its_first_commit_starts_afresh(tmp_path: Path) -> None:
    given, output = tmp_path / "in.parquet", tmp_path / "out.jsonl"
    given.write_text("not parquet")
    failed = invoke(model_ref(tmp_path), "-i", given, "-o", output)
    assert failed.exit_code == 2
    assert "is not a readable Parquet file" in failed.stderr
    write_rows(given, ROWS[:3])
    again = invoke(model_ref(tmp_path), "-i", given, "-o", output, "--field", "v")
    assert again.exit_code == 0, again.output
    assert read_rows(output) == [{"id": i, "prediction": 2 * i} for i in range(3)]
