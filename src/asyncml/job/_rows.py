"""From input rows to model items, and from outcomes to output records and dead letters.

Both run in a thread (they touch every row), and both take a fast path when every row of
a chunk is well formed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .._errors import AsyncmlError, ModelError
from ..io import BAD_ROW, RowChunk, encode_jsonl
from ..pipeline import StageError

#: The output field of a prediction that is not a dict.
PREDICTION = "prediction"
#: The output field of the row id when no ``id_field`` is given.
DEFAULT_ID = "id"


@dataclass(slots=True)
class Items:
    """The items of one chunk of input, ready for the model.

    Attributes:
        first_row, end_row: the chunk covers rows ``first_row .. end_row - 1``.
        position: where reading resumes after the chunk.
        items: what the model gets, one per good row.
        rows: the row number of each item.
        ids: the id of each item.
        dead: dead letters for the chunk's rows that never reached the model.
    """

    first_row: int
    end_row: int
    position: int
    items: list[Any]
    rows: range | list[int]
    ids: range | list[Any]
    dead: list[dict[str, Any]]


def dead_letter(row: int, ident: Any, stage: str, error: str, message: str) -> dict[str, Any]:
    """One dead-letter record: which row, its id if known, where and why it failed."""
    return {"row": row, "id": ident, "stage": stage, "error": error, "message": message}


def encode_dead_letters(letters: list[dict[str, Any]]) -> bytes:
    """Dead letters as JSON lines. Every one is written: an id or message that JSON cannot
    hold (a Decimal or bytes id, a string that is not valid Unicode) goes as text."""
    data, bad = encode_jsonl(letters)
    if not bad:
        return data
    safe = [_json_safe(letter) if i in bad else letter for i, letter in enumerate(letters)]
    return encode_jsonl(safe)[0]


def _json_safe(letter: dict[str, Any]) -> dict[str, Any]:
    safe = {}
    for key, value in letter.items():
        if not isinstance(value, str) and encode_jsonl([value])[1]:
            value = repr(value)  # not JSON: its repr, which is text
        if isinstance(value, str):  # a lone surrogate is no UTF-8: escaped
            value = value.encode("utf-8", "backslashreplace").decode()
        safe[key] = value
    return safe


def to_items(chunk: RowChunk, field: str | None, id_field: str | None) -> Items:
    """Picks each row's item (the row, or its ``field``) and id (its number, or its
    ``id_field``); rows that cannot give both become dead letters."""
    rows = chunk.rows
    first, end = chunk.first_row, chunk.end_row
    if not chunk.bad:
        try:
            items = rows if field is None else [row[field] for row in rows]
            ids: range | list[Any] = (
                range(first, end) if id_field is None else [row[id_field] for row in rows]
            )
            return Items(first, end, chunk.position, items, range(first, end), ids, [])
        except (KeyError, TypeError, IndexError):
            pass  # some row lacks a field: sort them out one by one
    items, numbers, ids, dead = [], [], [], []
    for number, row in enumerate(rows, first):
        bad = chunk.bad.get(number - first)
        if row is BAD_ROW and bad is not None:
            dead.append(dead_letter(number, None, "parse", bad.error, bad.message))
            continue
        if (field is not None or id_field is not None) and not isinstance(row, dict):
            message = f"row is a {type(row).__name__}, not an object with fields"
            dead.append(dead_letter(number, None, "input", "TypeError", message))
            continue
        ident: Any = number
        if id_field is not None:
            if id_field not in row:
                message = f"row has no id field {id_field!r}"
                dead.append(dead_letter(number, None, "input", "KeyError", message))
                continue
            ident = row[id_field]
        if field is not None and field not in row:
            message = f"row has no field {field!r}"
            dead.append(dead_letter(number, ident, "input", "KeyError", message))
            continue
        items.append(row if field is None else row[field])
        numbers.append(number)
        ids.append(ident)
    return Items(first, end, chunk.position, items, numbers, ids, dead)


def to_records(
    items: Items, values: list[Any], errors: dict[int, BaseException], id_name: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Output records for the items that succeeded (their id, then the prediction, or the
    fields of a dict prediction), and dead letters for those that failed."""
    ids = items.ids
    if not errors:
        records = [
            _record(id_name, ident, value)
            if isinstance(value, dict)  # OrderedDict and defaultdict too
            else {id_name: ident, PREDICTION: value}
            for ident, value in zip(ids, values, strict=True)
        ]
        return records, []
    records, dead = [], []
    for offset, (ident, value) in enumerate(zip(ids, values, strict=True)):
        error = errors.get(offset)
        if error is None:
            records.append(
                _record(id_name, ident, value)
                if isinstance(value, dict)
                else {id_name: ident, PREDICTION: value}
            )
        else:
            kind, message = describe(error)
            stage = error.stage if isinstance(error, StageError) else None
            dead.append(dead_letter(items.rows[offset], ident, stage or "model", kind, message))
    return records, dead


def _record(id_name: str, ident: Any, value: dict[str, Any]) -> dict[str, Any]:
    record = {id_name: ident, **value}
    record[id_name] = ident  # the row's id wins over a field of the same name
    return record


def describe(error: BaseException) -> tuple[str, str]:
    """The error type and message a dead letter shows: the model's own exception when the
    model raised, else asyncml's error (a timeout, a crashed worker)."""
    if isinstance(error, ModelError) and error.cause_type is not None:
        return error.cause_type, error.cause_message or ""
    if isinstance(error, AsyncmlError):
        return type(error).__name__, error.message
    return type(error).__name__, str(error)
