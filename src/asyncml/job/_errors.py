"""Why a job could not start or go on; each message is one line a user can act on.

::

    AsyncmlError
    └── JobError            the job cannot start or go on
        ├── InputError      the input cannot be read: missing, unknown format, unreadable
        ├── OutputError     the output (or its journal) cannot be written
        ├── ResumeError     a journal is in the way, or belongs to another job
        └── TooManyFailures more rows failed than ``max_failures`` allows; committed work
                            is kept, so the job can be resumed
"""

from __future__ import annotations

from .._errors import AsyncmlError


class JobError(AsyncmlError):
    """A job could not start or go on."""


class InputError(JobError):
    """The input file is missing, of an unknown format, or unreadable."""


class OutputError(JobError):
    """The output, its parts folder, the dead-letter file or the journal cannot be written."""


class ResumeError(JobError):
    """A journal exists but resuming was not asked for, or it records another job."""


class TooManyFailures(JobError):
    """More rows failed than ``max_failures`` allows; the job stopped after committing."""
