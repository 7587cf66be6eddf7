"""Rows sent to the model in slices: one queued item per batch of rows, not per row.

A job has its rows at hand in chunks, so it need not pay the batcher's per-item cost on
each of them (a future, a queue entry, a callback: about as much as parsing the row). It
loads a :class:`SlicedModel` around the user's model instead: each item is a slice of up
to ``max_batch_size`` rows, and the worker runs the slice as one batch through the user's
model, isolating failing rows exactly as asyncml does for single calls (``run_batch``).
A slice whose worker process died is run again row by row, so that only the row that
kills workers fails. With a :class:`~._decode.LineDecoder`, a slice is JSONL lines that the
worker parses itself (see ``_decode``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterable, Awaitable, Callable, Sequence
from functools import partial
from typing import Any, TypeVar, cast

import numpy as np

from .._batch import BatchOutcome, run_batch, stack_uniform
from .._loaded import LoadedModel
from .._model import Model, ModelSpec
from ._decode import DecodedSlice, LineDecoder, append_outcome, combine
from ._ordered import Outcomes, ordered_outcomes
from ._rows import Items

Tag = TypeVar("Tag")


def can_slice(spec: ModelSpec, model: object) -> bool:
    """Whether ``model`` can run in slices: a synchronous model whose batches are formed
    by size alone (length-aware batching needs to see single items)."""
    cls = model if isinstance(model, type) else type(model)
    item_cost = getattr(cls, "item_cost", None) if issubclass(cls, Model) else None
    return not spec.is_async and not spec.async_lifecycle and item_cost is None


class SlicedModel(Model[list[Any], BatchOutcome | DecodedSlice]):
    """Wraps a model so that one item is a slice of rows, run as one batch; with a
    ``decoder``, a slice of JSONL lines, parsed here."""

    max_batch_size = 1  # a slice is already a batch of the wrapped model's size

    def __init__(self, spec: ModelSpec, decoder: LineDecoder | None = None):
        self.spec = spec
        self.decoder = decoder
        self._model: Model[Any, Any] | None = None

    def _wrapped(self) -> Model[Any, Any]:
        if self._model is None:
            raise RuntimeError(f"model {self.spec.name!r} was not set up")
        return self._model

    def setup(self) -> None:
        self._model = self.spec.create()
        self._model.setup()

    def warmup(self) -> None:
        self._wrapped().warmup()

    def predict(self, slices: list[list[Any]]) -> list[BatchOutcome | DecodedSlice]:
        model = self._wrapped()
        decoder = self.decoder
        if decoder is None:
            return [_compact(run_batch(model, self.spec, rows)) for rows in slices]
        decoded: list[BatchOutcome | DecodedSlice] = []
        for lines in slices:
            rows = decoder(lines)
            ran = run_batch(model, self.spec, rows.items) if rows.items else BatchOutcome([])
            rows.items = []
            decoded.append(DecodedSlice(rows, _compact(ran)))
        return decoded

    def close(self) -> None:
        self._wrapped().close()


def _compact(ran: BatchOutcome) -> BatchOutcome:
    """Numbers out of an array, as one array again: from a worker process, one buffer
    crosses instead of a pickled numpy scalar per row."""
    values: Any = ran.values
    if ran.errors or len(values) == 0 or isinstance(values, np.ndarray):
        return ran
    first = values[0]
    if isinstance(first, np.generic):
        # Only scalars of one numpy type: an array of mixed values would convert them
        # (ints and floats to floats, anything with a string to strings).
        kind = type(first)
        if not all(type(value) is kind for value in values):
            return ran
        return BatchOutcome(cast(Sequence[Any], np.asarray(values)))
    if isinstance(first, np.ndarray):
        stacked = stack_uniform(values)
        return ran if stacked is None else BatchOutcome(cast(Sequence[Any], stacked))
    return ran


async def sliced_outcomes(
    model: LoadedModel[list[Any], Any],
    batches: AsyncIterable[tuple[Tag, Sequence[Any]]],
    *,
    slice_rows: int,
    max_in_flight: int,
) -> AsyncGenerator[Outcomes[Tag], None]:
    """Like :func:`ordered_outcomes`, for a loaded :class:`SlicedModel`: each batch's
    items go in slices of ``slice_rows``; outcomes come back per row, in input order."""

    async with contextlib.aclosing(
        _slice_outcomes(model, batches, partial(_row_by_row, model), slice_rows, max_in_flight)
    ) as results:
        async for tag, _, ran in results:
            values: list[Any] = []
            errors: dict[int, BaseException] = {}
            for outcome in ran:
                append_outcome(values, errors, outcome)
            yield Outcomes(tag, values, errors)


async def decoded_outcomes(
    model: LoadedModel[list[Any], Any],
    chunks: AsyncIterable[tuple[Items, Sequence[bytes]]],
    *,
    decoder: LineDecoder,
    slice_rows: int,
    max_in_flight: int,
) -> AsyncGenerator[Outcomes[Items], None]:
    """Like :func:`sliced_outcomes`, for a :class:`SlicedModel` with ``decoder``: each
    chunk's items are its JSONL lines. Yields each chunk's items as the job would have
    made them from parsed rows (``to_items``), with their outcomes."""
    ids_are_rows = decoder.id_field is None

    async def line_by_line(lines: Sequence[bytes]) -> DecodedSlice:
        ran = await asyncio.gather(*(model([line]) for line in lines), return_exceptions=True)
        parts: list[DecodedSlice] = []
        for line, one in zip(lines, ran, strict=True):
            if not isinstance(one, BaseException):
                parts.append(one)
                continue
            rows = decoder([line])  # here only to name the row's id in its dead letter
            failed = BatchOutcome([None], {0: cast(Any, one)}) if rows.items else BatchOutcome([])
            rows.items = []
            parts.append(DecodedSlice(rows, failed))
        items, values, errors = combine(parts, [1] * len(parts), ids_are_rows=ids_are_rows)
        return DecodedSlice(items, BatchOutcome(values, cast(Any, errors) or None))

    async with contextlib.aclosing(
        _slice_outcomes(model, chunks, line_by_line, slice_rows, max_in_flight)
    ) as results:
        async for chunk, slices, parts in results:
            items, values, errors = combine(
                parts,
                [len(lines) for lines in slices],
                ids_are_rows=ids_are_rows,
                first_row=chunk.first_row,
                position=chunk.position,
            )
            yield Outcomes(items, values, errors)


async def _slice_outcomes(
    model: LoadedModel[list[Any], Any],
    batches: AsyncIterable[tuple[Tag, Sequence[Any]]],
    redo: Callable[[Sequence[Any]], Awaitable[Any]],
    slice_rows: int,
    max_in_flight: int,
) -> AsyncGenerator[tuple[Tag, list[Sequence[Any]], list[Any]], None]:
    """Each batch's tag, slices, and one outcome per slice, in input order; a slice that
    failed as a whole (its worker died) is run again by ``redo``."""

    async def in_slices() -> AsyncGenerator[tuple[tuple[Tag, list[Sequence[Any]]], list[Any]]]:
        async for tag, items in batches:
            slices = [items[i : i + slice_rows] for i in range(0, len(items), slice_rows)]
            yield (tag, slices), slices

    window = max(1, max_in_flight // slice_rows)
    async with (
        contextlib.aclosing(in_slices()) as sliced,
        contextlib.aclosing(ordered_outcomes(model, sliced, max_in_flight=window)) as outcomes,
    ):
        async for outcome in outcomes:
            tag, slices = outcome.tag
            ran = [
                await redo(rows) if index in outcome.errors else outcome.values[index]
                for index, rows in enumerate(slices)
            ]
            yield tag, slices, ran


async def _row_by_row(model: LoadedModel[list[Any], Any], rows: Sequence[Any]) -> BatchOutcome:
    ran = await asyncio.gather(*(model([row]) for row in rows), return_exceptions=True)
    values: list[Any] = []
    errors: dict[int, Any] = {}
    for index, one in enumerate(ran):
        if isinstance(one, BaseException):
            errors[index] = one
            values.append(None)
        else:
            values.append(one.values[0])
            if one.errors:
                errors[index] = one.errors[0]
    return BatchOutcome(values, errors or None)
