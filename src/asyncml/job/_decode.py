"""JSONL rows parsed where the model runs, and put back together in the job.

A parsed JSON row can cost more to pickle and unpickle than to parse (a row of 64 numbers:
about 1.6 us to pickle, 1.8 us to unpickle, 2.3 us to parse), and parsing in the job's own
process holds the GIL that its reading, writing and worker drivers need. So when a job's
model runs in worker processes (or Ray actors), each slice of a JSONL input crosses as the
bytes of its lines: the worker parses them and picks each row's item and id exactly as the
job would (:func:`~._rows.to_items`), runs the rows that gave an item as one batch, and
returns their outcomes with what it learned of the rows. The job puts a chunk's slices
back together into the items and outcomes it would have had, had it parsed the rows itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._batch import BatchOutcome
from ..io import RowChunk, parse_rows
from ._rows import Items, to_items


@dataclass(frozen=True, slots=True)
class LineDecoder:
    """Turns JSONL lines into a job's items: each row's ``field`` (or the whole row), and
    its id (its number, or its ``id_field``)."""

    field: str | None
    id_field: str | None

    def __call__(self, lines: list[bytes]) -> Items:
        """The items of ``lines``, whose rows are numbered from 0."""
        rows, bad = parse_rows(lines)
        return to_items(RowChunk(0, rows, 0, bad), self.field, self.id_field)


@dataclass(slots=True)
class DecodedSlice:
    """A slice of lines after the worker: its rows, numbered from 0 (``rows.items`` left
    empty: the items stay where they were parsed), and the outcomes of those that gave an
    item, in order."""

    rows: Items
    outcome: BatchOutcome


def combine(
    parts: Sequence[DecodedSlice],
    sizes: Sequence[int],
    *,
    ids_are_rows: bool,
    first_row: int = 0,
    position: int = 0,
) -> tuple[Items, list[Any], dict[int, BaseException]]:
    """Consecutive slices of ``sizes`` lines as one, numbered from ``first_row``: its rows
    (items left empty), and the values and errors of the rows that gave an item.

    ``ids_are_rows``: the ids are the row numbers (no id field), so they move with them.
    """
    whole = not any(part.rows.dead for part in parts)  # every row gave an item
    values: list[Any] = []
    errors: dict[int, BaseException] = {}
    numbers: list[int] = []
    ids: list[Any] = []
    dead: list[dict[str, Any]] = []
    start = first_row
    for part, size in zip(parts, sizes, strict=True):
        append_outcome(values, errors, part.outcome)
        if not whole:
            numbers.extend(start + n for n in part.rows.rows)
            dead.extend(_moved(letter, start, ids_are_rows) for letter in part.rows.dead)
        if not ids_are_rows:
            ids.extend(part.rows.ids)
        start += size
    rows: range | list[int] = range(first_row, start) if whole else numbers
    items = Items(first_row, start, position, [], rows, rows if ids_are_rows else ids, dead)
    return items, values, errors


def append_outcome(
    values: list[Any], errors: dict[int, BaseException], outcome: BatchOutcome
) -> None:
    """Adds a slice's outcome to those of the slices before it (``values`` and ``errors``,
    errors keyed by offset)."""
    if outcome.errors:
        errors.update({len(values) + i: e for i, e in outcome.errors.items()})
    got: Any = outcome.values  # an array when the worker compacted its numbers
    values.extend(got.tolist() if isinstance(got, np.ndarray) else got)


def _moved(letter: dict[str, Any], by: int, ids_are_rows: bool) -> dict[str, Any]:
    moved = {**letter, "row": letter["row"] + by}
    if ids_are_rows and letter["id"] is not None:
        moved["id"] = letter["id"] + by
    return moved
