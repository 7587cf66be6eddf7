"""``asyncml run``: a model over every row of a file, resumable, each row written once.

A thin wrapper of :func:`asyncml.job.run_job`: it resolves the REF, shows progress (a rich
bar on a terminal, a line every few seconds otherwise), prints a summary, and turns errors
into one line and an exit code.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from .._errors import AsyncmlError, SetupError
from .._gc import fewer_collections
from .._ref import RefError, resolve
from ..job import JobError, JobProgress, JobSummary, TooManyFailures, run_job
from ..job._run import DEFAULT_COMMIT_ROWS
from ._app import main
from ._options import MAX_WORKERS, Finite, count, one_line
from ._ray import RayUnavailable, file_modules, ray_for

EXIT_FAILURES = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

#: Seconds between progress lines when stderr is not a terminal.
DEFAULT_PROGRESS_INTERVAL = 10.0


def _max_failures(_ctx: click.Context, _param: click.Parameter, value: str | None) -> Any:
    if value is None:
        return None
    try:
        if value.isdigit():
            return int(value)
        fraction = float(value)
    except ValueError:
        fraction = -1.0
    if not 0 <= fraction < 1:
        raise click.BadParameter(f"{value!r} is neither a count (10) nor a fraction (0.01)")
    return fraction


@main.command("run", context_settings={"max_content_width": 100})
@click.argument("ref")
@click.option(
    "--input",
    "-i",
    "input_path",
    required=True,
    metavar="PATH",
    help="Rows to run: .jsonl, .csv or .parquet; '-' reads JSONL from stdin.",
)
@click.option(
    "--output",
    "-o",
    "output_path",
    required=True,
    metavar="PATH",
    help="Where results go: .jsonl, .csv or .parquet; '-' writes JSONL to stdout.",
)
@click.option(
    "--field",
    metavar="NAME",
    help="Give the model this field of each row (default: the whole row).",
)
@click.option(
    "--id-field",
    metavar="NAME",
    help="Take each row's id from this field (default: its 0-based number, as 'id').",
)
@click.option(
    "--executor",
    type=click.Choice(["auto", "inline", "thread", "process", "ray"]),
    default="auto",
    show_default=True,
    help="Where the model runs: the event loop (inline: async models), threads, processes, "
    "Ray actors, or auto (threads, or the event loop for async models).",
)
@click.option(
    "--ray-address",
    metavar="ADDR",
    help="With --executor ray: the Ray cluster to run on (default: a local Ray).",
)
@click.option(
    "--workers",
    type=count(MAX_WORKERS),
    metavar="N",
    help="Workers running the model (default 1; with --executor process, one per core).",
)
@click.option(
    "--batch-size",
    type=count(),
    metavar="N",
    help="Largest batch per model call (default: the model's).",
)
@click.option(
    "--resume", is_flag=True, help="Continue the job the journal records, from its last commit."
)
@click.option(
    "--force", is_flag=True, help="Discard an existing journal and its parts, and start over."
)
@click.option(
    "--dead-letter",
    "dead_letter",
    metavar="PATH",
    help="JSONL file of the rows that failed (default: OUTPUT.dead.jsonl).",
)
@click.option(
    "--max-failures",
    callback=_max_failures,
    metavar="N|FRACTION",
    help="Stop (exit 1) once more than N rows, or this fraction of rows, failed.",
)
@click.option(
    "--journal", metavar="PATH", help="The job's journal (default: OUTPUT.journal.sqlite)."
)
@click.option(
    "--commit-every",
    type=count(),
    default=DEFAULT_COMMIT_ROWS,
    show_default=True,
    metavar="N",
    help="Commit at least every N rows (and every 10 seconds), as chunks complete.",
)
@click.option(
    "--chunk-size",
    type=count(),
    metavar="N",
    help="Bytes (JSONL, CSV) or rows (Parquet) read at a time (default: JSONL and CSV from "
    "4 KiB up to 1 MiB, sized to the model's pace; Parquet 8192 rows).",
)
@click.option(
    "--progress-interval",
    type=Finite(min=0),
    default=DEFAULT_PROGRESS_INTERVAL,
    show_default=True,
    metavar="SECONDS",
    help="Without a terminal: log a progress line to stderr this often.",
)
@click.option("--no-progress", is_flag=True, help="No progress bar, and no progress lines.")
def run(
    ref: str,
    input_path: str,
    output_path: str,
    field: str | None,
    id_field: str | None,
    executor: str,
    ray_address: str | None,
    workers: int | None,
    batch_size: int | None,
    resume: bool,
    force: bool,
    dead_letter: str | None,
    max_failures: int | float | None,
    journal: str | None,
    commit_every: int,
    chunk_size: int | None,
    progress_interval: float,
    no_progress: bool,
) -> None:
    """Run the model REF over every row of --input into --output.

    REF is path/to/file.py:name or package.module:name, naming a Model subclass or
    instance, or a function of a batch (a list) that returns one output per item.

    \b
    Each output row holds the row's id and the model's output, in a field named
    'prediction' (or the fields of a dict output). Rows that fail (malformed, missing a
    field, or a model error for that item) go to the dead-letter file, and the job goes on.

    \b
    Every row is written exactly once, even across crashes: results are committed in
    parts, recorded in a journal (SQLite), and assembled into OUTPUT at the end. After an
    interruption, run the same command with --resume: it continues from the last commit,
    without computing committed rows again. A journal of another job (a changed model,
    input or options) is refused; --force starts over.

    \b
    Exit codes:
      0    every row was processed (failed rows are in the dead-letter file)
      1    stopped: more rows failed than --max-failures allows, the model's setup failed,
           or the reader of -o - went away
      2    bad usage or input: a missing file, an unwritable output, a REF that does not
           import, a journal in the way
      130  interrupted (Ctrl-C); committed work is kept for --resume
    """
    console = Console(stderr=True, highlight=False)
    if resume and force:
        _fail("--resume and --force contradict each other: choose one", EXIT_USAGE)
    if ray_address is not None and executor != "ray":
        _fail("--ray-address needs --executor ray", EXIT_USAGE)
    try:
        model = resolve(ref)
    except RefError as error:
        _fail(str(error), EXIT_USAGE)
    progress: _ProgressBar | _ProgressLog | None = None
    if not no_progress:
        # A live bar only where it can redraw itself; logs, pipes and CI get lines.
        if console.is_terminal:
            progress = _ProgressBar(console)
        else:
            progress = _ProgressLog(console, progress_interval)
    try:
        with (
            ray_for(executor, ray_address, file_modules([ref])),
            fewer_collections(),  # this process is the job's: see asyncml._gc
        ):
            summary = asyncio.run(
                _run(
                    model.obj,
                    progress=progress,
                    input_path=input_path,
                    output_path=output_path,
                    field=field,
                    id_field=id_field,
                    dead_letters=dead_letter,
                    journal=journal,
                    resume=resume,
                    force=force,
                    max_failures=max_failures,
                    executor=executor,
                    workers=workers,
                    batch_size=batch_size,
                    commit_rows=commit_every,
                    chunk_size=chunk_size or 0,
                    model_ref=model.canonical,
                    code_hash=model.code_hash(),
                )
            )
    except KeyboardInterrupt:
        if "-" in (input_path, output_path):
            _fail(
                "interrupted: a job that reads stdin or writes stdout cannot resume",
                EXIT_INTERRUPTED,
            )
        _fail("interrupted: committed work is kept; run again with --resume", EXIT_INTERRUPTED)
    except RayUnavailable as error:
        _fail(str(error), EXIT_USAGE)
    except TooManyFailures as error:
        _fail(str(error), EXIT_FAILURES)
    except SetupError as error:
        _fail(str(error), EXIT_FAILURES)
    except JobError as error:
        _fail(str(error), EXIT_USAGE)
    except AsyncmlError as error:
        _fail(str(error), EXIT_FAILURES)
    _print_summary(console, summary)


async def _run(
    model: Any, *, progress: _ProgressBar | _ProgressLog | None, **options: Any
) -> JobSummary:
    if progress is None:
        return await run_job(model, **options)
    with progress:
        return await run_job(model, on_progress=progress.update, **options)


class _ProgressBar:
    """A rich progress bar fed by the job's progress reports."""

    def __init__(self, console: Console):
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[rows]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=True,
        )
        self._task: TaskID | None = None

    def __enter__(self) -> _ProgressBar:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def update(self, progress: JobProgress) -> None:
        rows = f"{progress.rows:,} rows, {progress.failed:,} failed"
        if self._task is None:
            # Starting at the resumed position, so the rate and ETA count this run only.
            self._task = self._progress.add_task(
                "asyncml run", total=progress.total, completed=progress.position, rows=rows
            )
        else:
            self._progress.update(self._task, completed=progress.position, rows=rows)


class _ProgressLog:
    """Progress as one line on stderr every ``interval`` seconds, for logs and CI.

    Driven by the job's reports after each chunk (no timer thread): a line is due once
    ``interval`` seconds have passed since the last one. The first report marks where
    this run starts, so after ``--resume`` the rate and ETA count this run's rows only.
    """

    def __init__(
        self, console: Console, interval: float, clock: Callable[[], float] = time.monotonic
    ):
        self._console = console
        self._interval = interval
        self._clock = clock
        self._first: tuple[float, JobProgress] | None = None
        self._logged_at = 0.0

    def __enter__(self) -> _ProgressLog:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def update(self, progress: JobProgress) -> None:
        now = self._clock()
        if self._first is None:
            self._first, self._logged_at = (now, progress), now
            return
        if now - self._logged_at < self._interval:
            return
        self._logged_at = now
        began, first = self._first
        line = progress_line(progress, since=first, elapsed=now - began)
        self._console.print(line, soft_wrap=True, markup=False, emoji=False)


def progress_line(progress: JobProgress, *, since: JobProgress, elapsed: float) -> str:
    """``asyncml run: ROWS[ / TOTAL] rows (PERCENT), FAILED failed; RATE rows/s; ETA H:MM:SS``.

    The total is shown where the input's size is a row count (Parquet); the percent is of
    the input read (bytes for JSONL and CSV). Rate and ETA count from ``since``, the
    report ``elapsed`` seconds ago where this run started.
    """
    total = progress.total
    rows = f"{progress.rows:,}"
    if total is not None and progress.unit == "rows":
        rows += f" / {total:,}"
    line = f"asyncml run: {rows} rows"
    if total:
        line += f" ({min(progress.position / total, 1.0):.1%})"
    line += f", {progress.failed:,} failed"
    if elapsed > 0:
        line += f"; {(progress.rows - since.rows) / elapsed:,.0f} rows/s"
        gained = progress.position - since.position
        if total and gained > 0:
            left = max(total - progress.position, 0) * elapsed / gained
            line += f"; ETA {_hours_minutes_seconds(left)}"
    return line


def _hours_minutes_seconds(seconds: float) -> str:
    whole = round(seconds)
    return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


def _print_summary(console: Console, summary: JobSummary) -> None:
    console.print(
        f"asyncml run: {summary.rows:,} rows: {summary.ok:,} ok, {summary.failed:,} failed, "
        f"{summary.resumed:,} resumed; {summary.rows_per_s:,.0f} rows/s; "
        f"{summary.wall_s:.2f} s in all, {summary.setup_s:.2f} s of it model setup",
        soft_wrap=True,
    )
    if summary.output != "-":
        console.print(f"  output: {summary.output}", soft_wrap=True, markup=False)
    if summary.dead_letters:
        console.print(f"  dead letters: {summary.dead_letters}", soft_wrap=True, markup=False)


def _fail(message: str, code: int) -> Any:
    click.echo(f"asyncml run: error: {one_line(message)}", err=True)
    raise click.exceptions.Exit(code)
