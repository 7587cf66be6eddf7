"""A pipeline: stages chained by bounded queues, fed from a source, drained by its consumer."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable, Coroutine, Iterable
from pathlib import Path
from types import TracebackType
from typing import Any

from ._channel import Channel, Item
from ._failures import (
    KEPT_IN_SUMMARY,
    DeadLetter,
    DeadLetterSink,
    FailureLimit,
    JsonlDeadLetters,
    PipelineFailed,
)
from ._outputs import NOTHING, Outputs
from ._progress import Progress, length_of, progress_display
from ._runners import StageRun, Withdrawn
from ._service import PipelineService
from ._stage import Stage, stage
from ._stats import PipelineStatistics, PipelineSummary

#: Source items read and handed to the first stage at a time (at most its queue's size).
SOURCE_CHUNK = 256


class Pipeline:
    """Stages that items flow through, each on its own workers, with bounded queues between.

    ::

        pipeline = asyncml.Pipeline(
            stage(fetch, concurrency=200, retry=3),          # async I/O, on the loop
            stage(preprocess, executor="thread"),            # sync, on a thread
            stage(Classifier, executor="process", workers=2),  # a model, batched
        )
        summary = await pipeline.run(urls)                   # to the end, with a summary
        async with pipeline.stream(urls) as outputs:         # or consume the outputs
            async for output in outputs: ...

    A plain function is accepted wherever a stage is, as ``stage(fn)``. The pipeline is a
    description: each run loads its own models and workers and closes them at its end.
    """

    def __init__(self, *stages: Stage | Callable[..., Any]):
        if not stages:
            raise ValueError("a pipeline needs at least one stage")
        self.stages: tuple[Stage, ...] = tuple(
            s if isinstance(s, Stage) else stage(s) for s in stages
        )
        names = [s.name for s in self.stages]
        duplicates = {name for name in names if names.count(name) > 1}
        if duplicates:
            raise ValueError(f"stage names must be unique; name them: {sorted(duplicates)}")

    def stream(
        self,
        items: Iterable[Any] | AsyncIterable[Any],
        *,
        ordered: bool = True,
        with_index: bool = False,
        max_in_flight: int = 1024,
        dead_letters: str | Path | DeadLetterSink | None = None,
        max_failures: int | float | None = None,
        progress: bool | Progress | None = False,
        total: int | None = None,
    ) -> PipelineRun:
        """Runs the pipeline over ``items``; enter the result and iterate over the outputs.

        Args:
            items: the source: an iterable (pulled on the event loop, so keep it cheap, e.g.
                a range, a list or a generator of small records) or an async iterable (for
                sources that do I/O). Pulled only as room frees up.
            ordered: outputs in source order (default), or as they are done.
            with_index: yield ``(source index, output)`` pairs instead of outputs.
            max_in_flight: source items inside the pipeline at once; in order, also the
                reorder window (one slow item holds back at most this many).
            dead_letters: where items that failed for good go: a path (JSON Lines,
                appended), or a callable taking each :class:`DeadLetter` on the loop.
            max_failures: stop with :class:`PipelineFailed` once more items failed than
                this count, or than this fraction of the items finished (judged over at
                least 100 items). Default: never stop.
            progress: ``True`` for a live display (a log line every 10 s without a
                terminal), a :class:`Progress` of your own, or ``False``.
            total: the number of source items, for progress, when ``len(items)`` fails.

        Raises:
            ValueError: an option is out of range.
        """
        return PipelineRun(
            self,
            items,
            ordered=ordered,
            with_index=with_index,
            max_in_flight=max_in_flight,
            dead_letters=dead_letters,
            failure_limit=FailureLimit(max_failures),
            progress=progress_display(progress),
            total=total if total is not None else length_of(items),
        )

    def open(
        self, *, max_queue: int = 1024, timeout: float | None = None, name: str | None = None
    ) -> PipelineService:
        """Keeps the pipeline running to answer calls item by item; enter the result.

        ::

            async with pipeline.open() as service:
                output = await service(item)            # from any number of coroutines
                future = service.call_nowait(item)      # or Overloaded when full

        Concurrent calls flow through the stages together, so model stages batch them.

        Args:
            max_queue: items inside the pipeline at once; ``call_nowait`` raises
                :class:`~asyncml.Overloaded` beyond it and ``await service(x)`` waits.
            timeout: default deadline of each call, in seconds (default: none); a call
                may set its own.
            name: the service's name in errors (default: the stages' names joined by
                ``+``).

        Raises:
            ValueError: an option is out of range.
        """
        return PipelineService(self, max_queue=max_queue, timeout=timeout, name=name)

    async def run(
        self,
        items: Iterable[Any] | AsyncIterable[Any],
        *,
        on_output: Callable[[Any], Any] | None = None,
        **options: Any,
    ) -> PipelineSummary:
        """Runs the pipeline to the end; returns its summary.

        Args:
            items: the source (see :meth:`stream`).
            on_output: called on the loop with each output (with ``with_index``, each
                ``(index, output)`` pair); outputs are dropped otherwise.
            options: as for :meth:`stream`.

        Raises:
            PipelineFailed: more items failed than ``max_failures`` allows.
        """
        options.setdefault("ordered", on_output is not None)
        async with self.stream(items, **options) as outputs:
            async for output in outputs:
                if on_output is not None:
                    on_output(output)
        return outputs.summary()


class PipelineRun:
    """One run of a :class:`Pipeline`: an async context manager and an async iterator.

    Entering loads every stage's model and starts the workers; leaving stops them. Leaving
    before the outputs are exhausted (``break``, an exception, Ctrl-C) aborts the run:
    queued items are dropped and running ones are cancelled or allowed to finish (threads
    cannot be interrupted); no task, thread or process outlives the block.
    """

    def __init__(
        self,
        pipeline: Pipeline,
        items: Iterable[Any] | AsyncIterable[Any],
        *,
        ordered: bool,
        with_index: bool,
        max_in_flight: int,
        dead_letters: str | Path | DeadLetterSink | None,
        failure_limit: FailureLimit,
        progress: Progress | None,
        total: int | None,
        withdrawn: Withdrawn | None = None,
    ):
        self._pipeline = pipeline
        self._withdrawn = withdrawn
        self._items = items
        self._with_index = with_index
        self._outputs = Outputs(max_in_flight, ordered=ordered)
        self._failure_limit = failure_limit
        self._progress = progress
        self._total = total
        self._file_sink: JsonlDeadLetters | None = None
        self._sink: DeadLetterSink | None = None
        if isinstance(dead_letters, str | Path):
            self._sink = self._file_sink = JsonlDeadLetters(dead_letters)
        else:
            self._sink = dead_letters
        self._letters_waiting: asyncio.Event | None = None
        self._writer: asyncio.Task[None] | None = None
        self._closing = False
        self._kept: list[DeadLetter] = []
        self._failed = 0
        self._error: PipelineFailed | None = None
        self._stages: list[StageRun] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._stack = contextlib.AsyncExitStack()
        self._started_at = 0.0
        self._elapsed: float | None = None
        self._entered = False

    async def __aenter__(self) -> PipelineRun:
        if self._entered:
            raise RuntimeError("a pipeline run can be entered once; call stream() again")
        self._entered = True
        self._letters_waiting = asyncio.Event()
        await self._stack.__aenter__()
        try:
            self._wire()
            for run in self._stages:
                if run.model is not None:
                    await self._stack.enter_async_context(run.model)
                    run.model_started = True
                elif hasattr(run.stage.fn, "__aenter__"):
                    await self._stack.enter_async_context(run.stage.fn)
                self._stack.callback(run.cancel_retries)
            # The clock starts once the models are loaded: setup is not throughput.
            self._started_at = asyncio.get_running_loop().time()
            group = await self._stack.enter_async_context(asyncio.TaskGroup())
            self._stack.push_async_callback(self._stop_tasks)
            self._start(group)
        except BaseException as error:
            await self._stack.__aexit__(type(error), error, error.__traceback__)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        self._finish_clock()
        try:
            await self._stack.__aexit__(exc_type, exc, tb)
        except BaseExceptionGroup as group:
            # A worker's own failure: raise it as itself, not wrapped, with its own cause.
            if len(group.exceptions) == 1:
                error = group.exceptions[0]
                raise error from error.__cause__
            raise
        finally:
            if self._progress is not None:
                self._progress.close(self.statistics())
        return None

    async def __aiter__(self) -> AsyncIterator[Any]:
        outputs, with_index = self._outputs, self._with_index
        while (ready := await outputs.take()) is not None:
            for index, output, _ in ready:
                if output is not NOTHING:
                    yield (index, output) if with_index else output
        self._finish_clock()

    async def events(self) -> AsyncIterator[deque[tuple[int, Any, bool]]]:
        """What :meth:`Outputs.take` gives, chunk by chunk: outputs and the ends of items."""
        outputs = self._outputs
        while (ready := await outputs.take()) is not None:
            yield ready
        self._finish_clock()

    @property
    def error(self) -> PipelineFailed | None:
        """Why the run stopped before its end, if it did: more items failed than
        ``max_failures`` allows, the source failed, or a stage broke (its worker raised
        rather than failing an item: the error is the ``__cause__``)."""
        return self._error

    def statistics(self) -> PipelineStatistics:
        """A snapshot of every stage's counters."""
        outputs = self._outputs
        return PipelineStatistics(
            stages=tuple(run.statistics() for run in self._stages),
            read=outputs.admitted,
            finished=outputs.delivered,
            outputs=outputs.outputs,
            failed=self._failed,
            total=self._total,
            elapsed=self._elapsed_now(),
        )

    def summary(self) -> PipelineSummary:
        """The run's totals (complete once the outputs were exhausted)."""
        stats = self.statistics()
        return PipelineSummary(
            items=stats.read,
            outputs=stats.outputs,
            failed=stats.failed,
            elapsed=stats.elapsed,
            stages=stats.stages,
            dead_letters=tuple(self._kept),
        )

    # -- wiring ----------------------------------------------------------------------------

    def _wire(self) -> None:
        # From the last stage back: each stage hands its outputs to the next one's put().
        after: StageRun | None = None
        for definition in reversed(self._pipeline.stages):
            run = StageRun(
                definition,
                Channel(definition.queue),
                downstream=self._deliver if after is None else after.put,
                when_done=None if after is None else after.inbox.close,
                fan_out=self._outputs.fan_out,
                on_failure=self._dead,
                withdrawn=self._withdrawn,
            )
            self._stages.insert(0, run)
            after = run
        for run in self._stages:
            if run.stage.kind == "pool":
                run.model = run.stage.load()

    def _start(self, group: asyncio.TaskGroup) -> None:
        def start(work: Coroutine[Any, Any, None], name: str, part: str) -> asyncio.Task[None]:
            task = group.create_task(work, name=name)
            task.add_done_callback(functools.partial(self._ended, part))
            return task

        self._tasks.append(start(self._feed(), "asyncml-pipeline-source", "the source"))
        for run in self._stages:
            name, part = f"asyncml-pipeline-{run.stage.name}", f"stage {run.stage.name!r}"
            self._tasks.extend(start(work, name, part) for work in run.workers())
        if self._file_sink is not None:
            self._writer = start(self._write_letters(), "asyncml-letters", "the dead-letter file")
        if self._progress is not None:
            progress = start(self._show_progress(), "asyncml-progress", "the progress display")
            self._tasks.append(progress)

    def _ended(self, part: str, task: asyncio.Task[None]) -> None:
        """A task of the run ended. One that raised broke the run: the task group cancels
        the others and the task that entered the run, and the consumer, whichever task it
        runs in, raises :class:`PipelineFailed` at once rather than wait for outputs."""
        if task.cancelled() or (error := task.exception()) is None:
            return
        failure = PipelineFailed(
            f"{part} broke: {type(error).__name__}: {error}", failed=self._failed
        )
        failure.__cause__ = error
        self._stop(failure)

    def _stop(self, failure: PipelineFailed) -> None:
        """Ends the run early: the consumer raises ``failure`` next (the first one kept)."""
        if self._error is None:
            self._error = failure
        self._outputs.fail(failure)

    async def _feed(self) -> None:
        first = self._stages[0]
        outputs = self._outputs
        chunk_size = min(SOURCE_CHUNK, first.inbox.capacity)
        index = 0
        try:
            if isinstance(self._items, AsyncIterable):
                async for value in self._items:
                    await outputs.admit(1)
                    await first.put([(index, (), value, 1)])
                    index += 1
            else:
                chunk: list[Item] = []
                for value in self._items:
                    chunk.append((index, (), value, 1))
                    index += 1
                    if len(chunk) == chunk_size:
                        await outputs.admit(len(chunk))
                        await first.put(chunk)
                        chunk = []
                if chunk:
                    await outputs.admit(len(chunk))
                    await first.put(chunk)
        except Exception as error:
            failure = PipelineFailed(
                f"the source failed after {index:,} items: {type(error).__name__}: {error}",
                failed=self._failed,
            )
            failure.__cause__ = error
            self._stop(failure)
            return
        finally:
            first.inbox.close()
        outputs.source_done()

    async def _deliver(self, items: list[Item]) -> None:
        output = self._outputs.output
        for root, path, value, _ in items:
            output(root, path, value)

    def _dead(self, definition: Stage, item: Item, error: BaseException) -> None:
        root, _, value, attempt = item
        letter = DeadLetter.of(root, definition.name, value, error, attempt)
        self._failed += 1
        if len(self._kept) < KEPT_IN_SUMMARY:
            self._kept.append(letter)
        if self._sink is not None:
            self._sink(letter)
            if self._file_sink is not None and self._letters_waiting is not None:
                self._letters_waiting.set()
        self._outputs.drop(root)
        if self._failure_limit.exceeded(self._failed, self._outputs.delivered):
            self._stop(
                PipelineFailed(
                    f"pipeline stopped: {self._failed:,} items failed, over "
                    f"{self._failure_limit}; the last at stage {definition.name!r}, item "
                    f"{root}: {letter.error_type}: {letter.message}",
                    failed=self._failed,
                    last=letter,
                )
            )

    async def _write_letters(self) -> None:
        sink, waiting = self._file_sink, self._letters_waiting
        assert sink is not None
        assert waiting is not None
        while not self._closing:
            await waiting.wait()
            waiting.clear()
            await sink.flush()  # never cancelled: a cancelled write could lose its lines
        await sink.flush()

    async def _show_progress(self) -> None:
        progress = self._progress
        assert progress is not None
        progress.open(self.statistics())
        while True:
            await asyncio.sleep(progress.interval)
            progress.update(self.statistics())

    async def _stop_tasks(self) -> None:
        """Cancels what still runs (workers when the run is left early, the progress display
        always), then lets the dead-letter writer write what is left and stop."""
        for task in self._tasks:
            task.cancel()
        self._closing = True
        if self._writer is not None and self._letters_waiting is not None:
            self._letters_waiting.set()
            await asyncio.shield(self._writer)

    def _finish_clock(self) -> None:
        if self._elapsed is None:
            self._elapsed = self._elapsed_now()

    def _elapsed_now(self) -> float:
        if self._elapsed is not None:
            return self._elapsed
        return asyncio.get_running_loop().time() - self._started_at
