"""Snapshots of a running pipeline, for progress displays, metrics and the final summary."""

from __future__ import annotations

from dataclasses import dataclass

from ._failures import DeadLetter


@dataclass(frozen=True)
class StageStatistics:
    """One stage's counters since the run started.

    Attributes:
        name: the stage's name.
        received: items that entered the stage's queue, each once (a retry is not counted
            again): those not yet ``done`` or ``withdrawn`` are in flight or queued, so a
            run that went to its end has ``received == done + withdrawn``.
        done: items the stage finished with (emitted outputs or failed for good).
        emitted: outputs it passed on (differs from ``done`` for filters and flat-maps).
        in_flight: items being worked on now.
        queued: items waiting in the stage's input queue, or for a retry's delay.
        retries: tries repeated after a failure.
        failures: items sent to the dead letters.
        withdrawn: items dropped before the stage ran them, because their caller gave up
            or their deadline passed (an open pipeline's calls; see :meth:`Pipeline.open`).
        broken: its items can only fail: a worker stage whose workers all died and none
            could be restarted, or a stage whose worker raised (rather than failing an
            item), which broke the run.
    """

    name: str
    received: int
    done: int
    emitted: int
    in_flight: int
    queued: int
    retries: int
    failures: int
    withdrawn: int = 0
    broken: bool = False


@dataclass(frozen=True)
class PipelineStatistics:
    """The whole run's counters.

    Attributes:
        stages: one entry per stage, in pipeline order.
        read: items taken from the source.
        finished: source items fully through (delivered, filtered out or failed).
        outputs: outputs delivered by the last stage.
        failed: items sent to the dead letters, over all stages.
        total: items the source holds, when known (``len()`` or ``total=``).
        elapsed: seconds since the run started, on the loop's clock.
    """

    stages: tuple[StageStatistics, ...]
    read: int
    finished: int
    outputs: int
    failed: int
    total: int | None
    elapsed: float

    @property
    def broken(self) -> bool:
        """A stage is broken (see :attr:`StageStatistics.broken`)."""
        return any(stage.broken for stage in self.stages)


@dataclass(frozen=True)
class PipelineSummary:
    """What :meth:`Pipeline.run` returns.

    Attributes:
        items: source items read.
        outputs: outputs the last stage delivered.
        failed: items sent to the dead letters.
        elapsed: seconds the run took.
        stages: per-stage counters at the end.
        dead_letters: the first 100 dead letters (all of them went to the sink).
    """

    items: int
    outputs: int
    failed: int
    elapsed: float
    stages: tuple[StageStatistics, ...]
    dead_letters: tuple[DeadLetter, ...]

    @property
    def items_per_second(self) -> float:
        return self.items / self.elapsed if self.elapsed > 0 else 0.0

    def __str__(self) -> str:
        return (
            f"{self.items:,} items in {self.elapsed:.2f} s ({self.items_per_second:,.0f}/s): "
            f"{self.outputs:,} outputs, {self.failed:,} failed"
        )
