"""``run_job``: a model over every row of a file, each row's outcome committed exactly once.

The event loop only queues items and moves outcomes along. Reading and parsing, encoding
and committing run in threads; the model runs on its executor. Rows are read in chunks;
each chunk's items go to the model at once, and outcomes come back in input order (see
``_ordered``), so every commit covers a prefix of the input and resuming needs only the
last commit's position.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncGenerator, AsyncIterable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._loaded import ExecutorName, LoadedModel, load
from .._model import model_spec
from ..io import Source, open_source
from ..pipeline import Pipeline
from ._crash import CrashPoints
from ._decode import LineDecoder
from ._errors import InputError, JobError, TooManyFailures
from ._fingerprint import describe_model
from ._ordered import DEFAULT_MAX_IN_FLIGHT, Outcomes, ordered_outcomes
from ._output import CommittedOutput, StreamedOutput, Tally
from ._rows import DEFAULT_ID, PREDICTION, Items, to_items
from ._sliced import SlicedModel, can_slice, decoded_outcomes, sliced_outcomes
from ._start import JobPaths, Started, check_paths, start

#: Commit at least every this many rows, and at least this often (seconds).
DEFAULT_COMMIT_ROWS = 100_000
DEFAULT_COMMIT_INTERVAL = 10.0


@dataclass(frozen=True, slots=True)
class JobProgress:
    """Where a running job stands; passed to ``on_progress`` after each chunk.

    Attributes:
        rows: rows done since the job began (a prefix of the input).
        ok: rows written; failed: rows dead-lettered.
        resumed: rows that were already done when this run started.
        position: where in the input the rows done end, in ``unit`` (``"bytes"`` or
            ``"rows"``).
        total: the input's size in ``unit``, when known.
    """

    rows: int
    ok: int
    failed: int
    resumed: int
    position: int
    total: int | None
    unit: str


@dataclass(frozen=True, slots=True)
class JobSummary:
    """What a finished job did.

    Attributes:
        output: where the rows were written (``"-"``: stdout).
        dead_letters: the dead-letter file, if any row failed.
        rows, ok, failed: rows done, written and dead-lettered, since the job began.
        resumed: rows already done when this run started (not computed again).
        wall_s: this run's duration, model setup included.
        setup_s: how long the model took to start (``setup()`` on every worker).
        rows_per_s: rows this run did per second once the model was running.
    """

    output: str
    dead_letters: str | None
    rows: int
    ok: int
    failed: int
    resumed: int
    wall_s: float
    setup_s: float
    rows_per_s: float


async def run_job(
    model: Any,
    input_path: str | Path,
    output_path: str | Path,
    *,
    field: str | None = None,
    id_field: str | None = None,
    dead_letters: str | Path | None = None,
    journal: str | Path | None = None,
    use_journal: bool = True,
    resume: bool = False,
    force: bool = False,
    max_failures: int | float | None = None,
    executor: ExecutorName = "auto",
    workers: int | None = None,
    batch_size: int | None = None,
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
    chunk_size: int = 0,
    commit_rows: int = DEFAULT_COMMIT_ROWS,
    commit_interval: float = DEFAULT_COMMIT_INTERVAL,
    model_ref: str | None = None,
    code_hash: str | None = None,
    on_progress: Callable[[JobProgress], None] | None = None,
) -> JobSummary:
    """Runs ``model`` over every row of ``input_path`` into ``output_path``.

    Formats come from the extensions (``.jsonl``, ``.csv``, ``.parquet``; ``"-"`` is
    JSONL on stdin or stdout). Each output row holds the row's id (its 0-based number in
    ``id``, or its ``id_field``) and the prediction (in ``prediction``, or the fields of a
    dict). Rows that fail (unparsable, missing a field, an error of the model for that
    item) go to the dead-letter file as JSONL, and the job goes on.

    Args:
        model: what :func:`asyncml.load` accepts (loaded here with ``executor``,
            ``workers`` and ``batch_size``), or a running :class:`~asyncml.LoadedModel`.
        workers: as in :func:`asyncml.load` (default 1), but one per core by default with
            ``executor="process"``.
        field: give the model this field of each row instead of the whole row.
        id_field: take each row's id from this field.
        dead_letters: default ``OUTPUT.dead.jsonl``.
        journal: default ``OUTPUT.journal.sqlite``.
        use_journal: ``False`` writes the same output without a journal or fsync: the job
            cannot resume (for measuring what the journal costs).
        resume: continue the job the journal records.
        force: discard any journal and start over.
        max_failures: stop (raising :class:`TooManyFailures`) once more rows failed than
            this many, or than this fraction of the rows done if below 1.
        max_in_flight: items queued to the model at most, beyond the chunk being queued.
        chunk_size: bytes (JSONL, CSV) or rows (Parquet) read at a time; 0: default.
        commit_rows, commit_interval: commit at least every this many rows and seconds.
        model_ref, code_hash: how the journal names the model (default: its module and
            name, and a hash of its source file).
        on_progress: called on the event loop after each chunk.

    Raises:
        InputError, OutputError: a path that cannot be read or written.
        ResumeError: a journal without ``resume`` or ``force``, or of another job.
        TooManyFailures: more failures than ``max_failures``; the work done is committed.
        SetupError: the model could not start.
    """
    _check_max_failures(max_failures)
    if id_field == PREDICTION:
        raise JobError(
            f"--id-field {PREDICTION!r} would share its field with each row's prediction: "
            "rename the input's field"
        )
    loop = asyncio.get_running_loop()
    began = loop.time()
    paths = JobPaths.of(input_path, output_path, dead_letters=dead_letters, journal=journal)
    input_format, output_format = await asyncio.to_thread(check_paths, paths)
    if model_ref is None or code_hash is None:
        named, hashed = await asyncio.to_thread(describe_model, model)
        model_ref, code_hash = model_ref or named, hashed if code_hash is None else code_hash
    id_name = id_field or DEFAULT_ID
    setup = running = 0.0
    # What computes, not yet started (checked before any file is touched): a model to load,
    # or a pipeline to open; a running LoadedModel is used as it is.
    starting: contextlib.AbstractAsyncContextManager[Any] | None = None
    slice_rows: int | None = None
    decoder: LineDecoder | None = None
    if isinstance(model, Pipeline):
        if executor != "auto" or workers is not None or batch_size is not None:
            raise JobError(
                f"{model_ref!r} is a pipeline: its stages choose their executors, workers "
                "and batch sizes (drop --executor, --workers and --batch-size)"
            )
        starting = model.open(max_queue=max_in_flight)
    elif not isinstance(model, LoadedModel):
        if workers is None and executor == "process":
            workers = os.cpu_count() or 1  # a job has the machine to itself: use every core
        # JSONL lines go to worker processes unparsed, for them to parse (see ``_decode``).
        if input_format == "jsonl" and executor in ("process", "ray"):
            decoder = LineDecoder(field, id_field)
        try:
            starting, slice_rows, decoder = _load(
                model, executor, workers, batch_size, max_in_flight, decoder
            )
        except (TypeError, ValueError) as error:
            raise JobError(f"cannot load the model {model_ref!r}: {error}") from error
    started = await asyncio.to_thread(
        start,
        paths,
        output_format=output_format,
        id_name=id_name,
        model_ref=model_ref,
        code_hash=code_hash,
        field=field,
        id_field=id_field,
        resume=resume,
        force=force,
        use_journal=use_journal,
        crash=CrashPoints(os.environ),
    )
    output = started.output
    finished = False
    try:
        if started.done:
            await asyncio.to_thread(output.close, remove=True)
        else:
            run = _Run(started, paths, field, id_field, max_failures, on_progress, decoder)
            source = await run.open(chunk_size)  # before the model's setup, which may be long
            try:
                setup_began = loop.time()
                if starting is None:
                    await run.process(
                        model, source, None, max_in_flight, commit_rows, commit_interval
                    )
                else:
                    async with starting as running_model:
                        setup = loop.time() - setup_began
                        await run.process(
                            running_model,
                            source,
                            slice_rows,
                            max_in_flight,
                            commit_rows,
                            commit_interval,
                        )
            finally:
                await asyncio.shield(asyncio.to_thread(source.close))
            await asyncio.to_thread(output.finish)
            running = loop.time() - setup_began - setup
        finished = True
    finally:
        if not finished:
            await asyncio.shield(asyncio.to_thread(output.close))
    tally = output.tally
    wall = loop.time() - began
    done_now = tally.rows - started.resumed_rows
    return JobSummary(
        output=paths.output,
        dead_letters=str(paths.dead_letters) if tally.failed else None,
        rows=tally.rows,
        ok=tally.ok,
        failed=tally.failed,
        resumed=started.resumed_rows,
        wall_s=wall,
        setup_s=setup,
        rows_per_s=done_now / running if running > 0 else 0.0,
    )


def _load(
    model: Any,
    executor: ExecutorName,
    workers: int | None,
    batch_size: int | None,
    max_in_flight: int,
    decoder: LineDecoder | None,
) -> tuple[LoadedModel[Any, Any], int | None, LineDecoder | None]:
    """The job's model, not yet started; the rows per item when it runs in slices, and
    the ``decoder`` if its slices are of JSONL lines (only slices can be)."""
    threads = _threads_per_worker(workers)
    spec = model_spec(model, max_batch_size=batch_size)
    if not can_slice(spec, model):
        loaded: LoadedModel[Any, Any] = load(
            model,
            executor=executor,
            workers=workers,
            max_batch_size=batch_size,
            max_queue=max_in_flight,
            intra_op_threads=threads,
        )
        return loaded, None, None
    rows = spec.max_batch_size
    loaded = load(
        SlicedModel(spec, decoder),
        executor=executor,
        workers=workers,
        max_queue=max(2, max_in_flight // rows),
        intra_op_threads=threads,
        name=spec.name,
    )
    return loaded, rows, decoder


def _threads_per_worker(workers: int | None) -> int:
    """BLAS/OpenMP threads per worker: the job's own reading and writing keep a core busy,
    so the workers share the others (on two cores, an MLP ran 4x faster with one thread
    than with two)."""
    return max(1, ((os.cpu_count() or 1) - 1) // (workers or 1))


def _check_max_failures(max_failures: int | float | None) -> None:
    if max_failures is None:
        return
    if isinstance(max_failures, bool) or not isinstance(max_failures, int | float):
        raise TypeError(f"max_failures must be a number or None, got {max_failures!r}")
    if max_failures < 0 or (isinstance(max_failures, float) and max_failures >= 1):
        raise ValueError(
            f"max_failures must be a count >= 0 or a fraction below 1, got {max_failures!r}"
        )


class _Run:
    """One run's loop: read chunks, run their items, add outcomes, commit now and then."""

    def __init__(
        self,
        started: Started,
        paths: JobPaths,
        field: str | None,
        id_field: str | None,
        max_failures: int | float | None,
        on_progress: Callable[[JobProgress], None] | None,
        decoder: LineDecoder | None,
    ):
        self._output: CommittedOutput | StreamedOutput = started.output
        self._resumed = started.resumed_rows
        self._position = started.position
        self._paths = paths
        self._field = field
        self._id_field = id_field
        self._max_failures = max_failures
        self._on_progress = on_progress
        self._decoder = decoder
        self._adaptive = False
        self._sizer: _ChunkSizer | None = None

    async def open(self, chunk_size: int) -> Source:
        """The input, at the position the job resumes from.

        Raises:
            InputError: it cannot be opened, or is not what its extension says.
        """
        self._adaptive = not chunk_size  # the default size: sized to the model's pace
        columns = [c for c in (self._field, self._id_field) if c] if self._field else None
        try:
            return await asyncio.to_thread(
                open_source,
                self._paths.input,
                position=self._position,
                first_row=self._resumed,
                columns=columns,
                chunk_size=chunk_size,
                parse=self._decoder is None,
            )
        except (OSError, ValueError) as error:
            raise InputError(f"cannot read {self._paths.input!r}: {_reason(error)}") from None

    async def process(
        self,
        model: LoadedModel[Any, Any],
        source: Source,
        slice_rows: int | None,
        max_in_flight: int,
        commit_rows: int,
        commit_interval: float,
    ) -> None:
        """Runs every row of ``source`` through ``model``, committing as it goes."""
        loop = asyncio.get_running_loop()
        output = self._output
        committed_rows, committed_at = self._resumed, loop.time()
        sizer = self._sizer = _ChunkSizer.of(source, commit_interval) if self._adaptive else None
        finished_at = loop.time()
        self._report(output.tally, self._position, source)
        async with (
            contextlib.aclosing(self._chunks(source)) as chunks,
            contextlib.aclosing(
                self._outcomes(model, chunks, slice_rows, max_in_flight)
            ) as outcomes,
        ):
            async for outcome in outcomes:
                if sizer is not None:
                    sizer.took(loop.time() - finished_at)
                    finished_at = loop.time()
                tally = await asyncio.to_thread(output.add, outcome.tag, outcome)
                stop = self._too_many_failures(tally)
                due = tally.rows - committed_rows >= commit_rows
                if stop or due or loop.time() - committed_at >= commit_interval:
                    await asyncio.to_thread(output.commit)
                    committed_rows, committed_at = tally.rows, loop.time()
                self._report(tally, outcome.tag.position, source)
                if stop is not None:
                    await asyncio.to_thread(output.publish_dead_letters)  # for the message
                    raise TooManyFailures(stop)

    def _outcomes(
        self,
        model: LoadedModel[Any, Any],
        chunks: AsyncIterable[tuple[Items, list[Any]]],
        slice_rows: int | None,
        max_in_flight: int,
    ) -> AsyncGenerator[Outcomes[Items], None]:
        if slice_rows is None:
            return ordered_outcomes(model, chunks, max_in_flight=max_in_flight)
        if self._decoder is None:
            return sliced_outcomes(
                model, chunks, slice_rows=slice_rows, max_in_flight=max_in_flight
            )
        return decoded_outcomes(
            model,
            chunks,
            decoder=self._decoder,
            slice_rows=slice_rows,
            max_in_flight=max_in_flight,
        )

    async def _chunks(self, source: Source) -> AsyncGenerator[tuple[Items, list[Any]], None]:
        while (items := await asyncio.to_thread(self._read, source)) is not None:
            if self._sizer is not None:
                self._sizer.read()
            yield items, items.items

    def _read(self, source: Source) -> Items | None:
        try:
            chunk = source.read()
        except (OSError, ValueError) as error:  # e.g. a corrupt Parquet page
            raise InputError(f"cannot read {self._paths.input!r}: {_reason(error)}") from None
        if chunk is None:
            return None
        if self._decoder is not None:  # unparsed lines: the workers make the items
            first, end = chunk.first_row, chunk.end_row
            numbers = range(first, end)
            return Items(first, end, chunk.position, chunk.rows, numbers, numbers, [])
        return to_items(chunk, self._field, self._id_field)

    def _too_many_failures(self, tally: Tally) -> str | None:
        limit = self._max_failures
        if limit is None:
            return None
        allowed = limit * tally.rows if isinstance(limit, float) else limit
        if tally.failed <= allowed:
            return None
        what = f"{limit:.1%} of rows" if isinstance(limit, float) else f"{limit}"
        return (
            f"stopped: {tally.failed} of {tally.rows} rows failed, more than --max-failures "
            f"allows ({what}); see {str(self._paths.dead_letters)!r}. The work done is "
            "committed: to go on, run again with --resume and a higher --max-failures"
        )

    def _report(self, tally: Tally, position: int, source: Source) -> None:
        if self._on_progress is not None:
            progress = JobProgress(
                tally.rows,
                tally.ok,
                tally.failed,
                self._resumed,
                position,
                source.total,
                source.unit,
            )
            self._on_progress(progress)


class _ChunkSizer:
    """Sizes the byte chunks of JSONL and CSV inputs for the model's pace. Commits cover
    whole chunks, so a slow model given a megabyte of rows would commit (and be resumable)
    only hours later. Chunks therefore start small and double with each read up to the
    default size, which a fast model reaches within a few reads; once the model takes
    longer than a quarter of the commit interval over one, they stop growing, and halve
    each time that happens again."""

    FIRST = 4 << 10
    SMALLEST = 1 << 10

    def __init__(self, source: Any, target: float):
        self._source = source
        self._largest = source.block_bytes
        self._target = target
        self._growing = True
        source.block_bytes = min(self.FIRST, self._largest)

    @classmethod
    def of(cls, source: Source, commit_interval: float) -> _ChunkSizer | None:
        if not isinstance(getattr(source, "block_bytes", None), int):
            return None  # Parquet: row groups
        return cls(source, commit_interval / 4)

    def read(self) -> None:
        """A chunk is about to be read: the one after it may be larger."""
        if self._growing:
            self._source.block_bytes = min(self._largest, self._source.block_bytes * 2)

    def took(self, seconds: float) -> None:
        """The model took ``seconds`` over the last chunk."""
        if seconds > self._target:
            self._growing = False
            self._source.block_bytes = max(self.SMALLEST, self._source.block_bytes // 2)


def _reason(error: BaseException) -> str:
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error).splitlines()[0] if str(error) else type(error).__name__
