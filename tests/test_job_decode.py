"""JSONL lines parsed in the worker (``job/_decode.py``): the items, ids, dead letters and
outcomes the job puts back together are those it would have made from rows it parsed."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asyncml._batch import run_batch
from asyncml._model import model_spec
from asyncml.io import RowChunk, parse_rows
from asyncml.job import _run, run_job
from asyncml.job._decode import DecodedSlice, LineDecoder, combine
from asyncml.job._rows import Items, to_items
from tests.process_models import twice_v

#: One line of each kind a job meets: good rows, malformed JSON, a missing field, a missing
#: id, a row that is not an object, a row the model fails.
LINES = [
    b'{"key": "a", "v": 1}',
    b'{"key": "b", "v": 2}',
    b"{not json",
    b'{"key": "c"}',
    b'{"v": 3}',
    b"[1, 2]",
    b'{"key": "d", "v": 13}',
    b'{"key": 5, "v": 4}',
]
SPEC = model_spec(twice_v)
MODEL = SPEC.create()


def parsed_in_the_job(
    lines: list[bytes], decoder: LineDecoder, first_row: int
) -> tuple[Items, list[Any], dict[int, str]]:
    rows, bad = parse_rows(lines)
    items = to_items(RowChunk(first_row, rows, 0, bad), decoder.field, decoder.id_field)
    ran = run_batch(MODEL, SPEC, items.items)
    items.items = []
    return items, list(ran.values), {i: str(e) for i, e in (ran.errors or {}).items()}


def parsed_in_slices(
    lines: list[bytes], decoder: LineDecoder, first_row: int, size: int
) -> tuple[Items, list[Any], dict[int, str]]:
    parts, sizes = [], []
    for start in range(0, len(lines), size):
        rows = decoder(lines[start : start + size])
        ran = run_batch(MODEL, SPEC, rows.items)
        rows.items = []
        parts.append(DecodedSlice(rows, ran))
        sizes.append(len(lines[start : start + size]))
    items, values, errors = combine(
        parts, sizes, ids_are_rows=decoder.id_field is None, first_row=first_row
    )
    return items, values, {i: str(e) for i, e in errors.items()}


@settings(max_examples=150, deadline=None)
@given(
    kinds=st.lists(st.integers(0, len(LINES) - 1), min_size=1, max_size=40),
    size=st.integers(1, 9),
    first_row=st.integers(0, 1000),
    id_field=st.sampled_from([None, "key"]),
)
def test_slices_parsed_apart_come_together_as_the_job_would_parse_them(
    kinds: list[int], size: int, first_row: int, id_field: str | None
) -> None:
    lines = [LINES[k] for k in kinds]
    decoder = LineDecoder(None, id_field)
    expected_items, expected_values, expected_errors = parsed_in_the_job(lines, decoder, first_row)
    items, values, errors = parsed_in_slices(lines, decoder, first_row, size)
    assert (items.first_row, items.end_row) == (first_row, first_row + len(lines))
    assert list(items.rows) == list(expected_items.rows)
    assert list(items.ids) == list(expected_items.ids)
    assert items.dead == expected_items.dead
    assert values == expected_values
    assert errors == expected_errors


def test_a_field_is_picked_in_the_worker_and_its_absence_is_a_dead_letter() -> None:
    decoder = LineDecoder("v", None)
    items = decoder([b'{"v": 1}', b'{"w": 2}', b'{"v": 3}'])
    assert items.items == [1, 3]
    assert list(items.rows) == [0, 2]
    assert items.dead == [
        {"row": 1, "id": 1, "stage": "input", "error": "KeyError",
         "message": "row has no field 'v'"},
    ]  # fmt: skip


MESSY = (
    b'{"key": "a", "v": 1}\n'
    b"\n"
    b"{not json\n"
    b'{"key": "c"}\n'
    b"   \n"
    b'{"v": 3}\n'
    b"[1, 2]\n"
    b'{"key": "f", "v": 13}\n'
    + b"".join(b'{"key": "k%d", "v": %d}\n' % (i, i) for i in range(20, 60))
)


async def run_messy(tmp_path: Path, executor: str) -> tuple[bytes, bytes]:
    given_path, output = tmp_path / "in.jsonl", tmp_path / f"out-{executor}.jsonl"
    given_path.write_bytes(MESSY)
    await run_job(
        twice_v,
        given_path,
        output,
        id_field="key",
        executor=executor,  # type: ignore[arg-type]
        batch_size=4,
        chunk_size=200,  # several chunks, each of several slices
    )
    dead = output.with_name(output.name + ".dead.jsonl")
    return output.read_bytes(), dead.read_bytes()


def test_a_job_on_process_workers_parses_there_and_writes_what_a_thread_job_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    parsed_here = []
    real = _run.to_items  # type: ignore[attr-defined]

    def counted(*args: Any) -> Any:
        parsed_here.append(args)
        return real(*args)

    monkeypatch.setattr(_run, "to_items", counted)
    workers = []
    real_load = _run.load  # type: ignore[attr-defined]

    def load(*args: Any, **options: Any) -> Any:
        workers.append((options["executor"], options["workers"]))
        return real_load(*args, **options)

    monkeypatch.setattr(_run, "load", load)
    on_threads = asyncio.run(run_messy(tmp_path, "thread"))
    assert parsed_here  # the thread job parses its rows itself...
    parsed_here.clear()
    on_processes = asyncio.run(run_messy(tmp_path, "process"))
    assert not parsed_here  # ...the process job leaves it to its workers
    assert on_processes == on_threads
    # a job on process workers starts one per core; on threads, one
    assert workers == [("thread", None), ("process", os.cpu_count())]
    output, dead = on_processes
    assert len(output.splitlines()) == 41
    assert [orjson.loads(line)["row"] for line in dead.splitlines()] == [1, 2, 3, 4, 5]
