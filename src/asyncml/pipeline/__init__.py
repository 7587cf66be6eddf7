"""Pipelines: stages chained by bounded queues, with retries, dead letters and progress."""

from ._failures import DeadLetter, JsonlDeadLetters, PipelineFailed, StageError
from ._fetch import Fetch, HTTPStatusError, RetryableStatus, fetch
from ._pipeline import Pipeline, PipelineRun
from ._progress import LogProgress, Progress, RichProgress
from ._rate import RateLimit
from ._retry import Retry
from ._service import PipelineService
from ._stage import Stage, stage
from ._stats import PipelineStatistics, PipelineSummary, StageStatistics

__all__ = [
    "DeadLetter",
    "Fetch",
    "HTTPStatusError",
    "JsonlDeadLetters",
    "LogProgress",
    "Pipeline",
    "PipelineFailed",
    "PipelineRun",
    "PipelineService",
    "PipelineStatistics",
    "PipelineSummary",
    "Progress",
    "RateLimit",
    "Retry",
    "RetryableStatus",
    "RichProgress",
    "Stage",
    "StageError",
    "StageStatistics",
    "fetch",
    "stage",
]
