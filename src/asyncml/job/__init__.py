"""Jobs: a model over every row of a file, resumable, each row's outcome written once.

::

    summary = await asyncml.job.run_job(model, "rows.jsonl", "predictions.parquet")

The command line's ``asyncml run`` is a thin wrapper of :func:`run_job`. The step that
runs items and returns their outcomes in order, :func:`ordered_outcomes`, takes any async
callable of one item, so other computations (a pipeline) can drive a job too.
"""

from .._gc import fewer_collections
from ._errors import InputError, JobError, OutputError, ResumeError, TooManyFailures
from ._ordered import Outcomes, ordered_outcomes
from ._run import JobProgress, JobSummary, run_job

__all__ = [
    "InputError",
    "JobError",
    "JobProgress",
    "JobSummary",
    "Outcomes",
    "OutputError",
    "ResumeError",
    "TooManyFailures",
    "fewer_collections",
    "ordered_outcomes",
    "run_job",
]
