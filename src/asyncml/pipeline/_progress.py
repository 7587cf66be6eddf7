"""Progress displays: they read :class:`PipelineStatistics` snapshots, nothing else.

A live rich table on a terminal, a log line every few seconds elsewhere; any object with the
same four members plugs in (a metrics exporter, a web page).
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from ._stats import PipelineStatistics, StageStatistics

logger = logging.getLogger("asyncml.pipeline")


class Progress:
    """Base of progress displays; the pipeline calls ``open``, ``update`` every ``interval``
    seconds, and ``close`` at the end (also after a failure)."""

    interval: float = 0.5

    def open(self, stats: PipelineStatistics) -> None:
        """The run started."""

    def update(self, stats: PipelineStatistics) -> None:
        """A periodic snapshot."""

    def close(self, stats: PipelineStatistics) -> None:
        """The run ended: show the final state."""


class _Rates:
    """Items per second per stage, smoothed over recent updates."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[float, int]] = {}
        self._rates: dict[str, float] = {}

    def observe(self, elapsed: float, stage: StageStatistics) -> float:
        last = self._last.get(stage.name)
        self._last[stage.name] = (elapsed, stage.done)
        if last is None or elapsed <= last[0]:
            rate = stage.done / elapsed if elapsed > 0 else 0.0
        else:
            recent = (stage.done - last[1]) / (elapsed - last[0])
            previous = self._rates.get(stage.name, recent)
            rate = 0.7 * recent + 0.3 * previous
        self._rates[stage.name] = rate
        return rate


def _eta(total: int | None, done: int, rate: float) -> str:
    if total is None or rate <= 0 or done >= total:
        return "-"
    seconds = int((total - done) / rate)
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02}:{seconds:02}" if hours else f"{minutes}:{seconds:02}"


def _expected(stats: PipelineStatistics, position: int) -> int | None:
    """How many items the stage at ``position`` will see: the source's total, for the first."""
    if position == 0 or stats.total is None:
        return stats.total
    before = stats.stages[position - 1]
    if before.emitted != before.done - before.failures:
        return None  # a filter or flat-map upstream: unknown
    return stats.total - sum(stage.failures for stage in stats.stages[:position])


class RichProgress(Progress):
    """A live table on the terminal: one line per stage."""

    def __init__(self, console: Any = None, interval: float = 0.5):
        from rich.console import Console

        self.interval = interval
        self._console = console or Console(stderr=True)
        self._live: Any = None
        self._rates = _Rates()

    def open(self, stats: PipelineStatistics) -> None:
        from rich.live import Live

        self._live = Live(console=self._console, auto_refresh=False, transient=False)
        self._live.start()
        self.update(stats)

    def update(self, stats: PipelineStatistics) -> None:
        if self._live is not None:
            self._live.update(self._table(stats), refresh=True)

    def close(self, stats: PipelineStatistics) -> None:
        if self._live is not None:
            self.update(stats)
            self._live.stop()
            self._live = None

    def _table(self, stats: PipelineStatistics) -> Any:
        from rich.table import Table

        table = Table(box=None, title_justify="left")
        for column in ("stage", "done", "items/s", "in flight", "queued", "retries", "failed"):
            table.add_column(column, justify="left" if column == "stage" else "right")
        table.add_column("ETA", justify="right")
        for position, stage in enumerate(stats.stages):
            rate = self._rates.observe(stats.elapsed, stage)
            expected = _expected(stats, position)
            done = f"{stage.done:,}" + (f"/{expected:,}" if expected is not None else "")
            table.add_row(
                stage.name,
                done,
                f"{rate:,.0f}",
                f"{stage.in_flight:,}",
                f"{stage.queued:,}",
                f"{stage.retries:,}",
                f"[red]{stage.failures:,}[/]" if stage.failures else "0",
                _eta(expected, stage.done, rate),
            )
        return table


class LogProgress(Progress):
    """A log line per stage every ``interval`` seconds (logger ``asyncml.pipeline``)."""

    def __init__(self, interval: float = 10.0, log: logging.Logger = logger):
        self.interval = interval
        self._log = log
        self._rates = _Rates()

    def update(self, stats: PipelineStatistics) -> None:
        for position, stage in enumerate(stats.stages):
            rate = self._rates.observe(stats.elapsed, stage)
            expected = _expected(stats, position)
            self._log.info(
                "stage %s: %s done, %.0f items/s, %d in flight, %d queued, %d retries, "
                "%d failed, ETA %s",
                stage.name,
                f"{stage.done:,}" + (f"/{expected:,}" if expected is not None else ""),
                rate,
                stage.in_flight,
                stage.queued,
                stage.retries,
                stage.failures,
                _eta(expected, stage.done, rate),
            )

    def close(self, stats: PipelineStatistics) -> None:
        self.update(stats)


def length_of(items: object) -> int | None:
    """How many items a source holds, if it can say without being consumed."""
    try:
        return len(items)  # type: ignore[arg-type]
    except TypeError:
        return None


def progress_display(progress: bool | Progress | None) -> Progress | None:
    """The display ``progress=`` asks for: rich on a terminal, log lines elsewhere."""
    if isinstance(progress, Progress):
        return progress
    if not progress:
        return None
    return RichProgress() if sys.stderr.isatty() else LogProgress()
