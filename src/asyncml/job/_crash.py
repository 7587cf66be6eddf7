"""Named points in the commit protocol where crash tests kill the job with SIGKILL.

Set ``ASYNCML_JOB_CRASH_AT`` to ``POINT`` or ``POINT:SEQ`` (several separated by commas),
e.g. ``after-rename:2``: the process kills itself when commit 2 reaches that point, as
``kill -9`` at the worst moment would. Unset, every check is one set lookup.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Mapping

ENV_VAR = "ASYNCML_JOB_CRASH_AT"

#: The points, in the order a commit and the final assembly reach them.
POINTS = (
    "before-rename",  # a part is written and synced under its temporary name
    "after-rename",  # the part has its final name, but the journal does not list it yet
    "after-journal",  # the commit is recorded
    "after-assemble",  # the final output is complete under its temporary name
    "after-done",  # the output is in place and the journal marked done; not cleaned up yet
)


class CrashPoints:
    """The points at which this job kills itself; read once, when the job starts."""

    def __init__(self, environ: Mapping[str, str]):
        self._points: set[str] = set()
        for spec in environ.get(ENV_VAR, "").split(","):
            name = spec.strip().partition(":")[0]
            if name and name not in POINTS:
                raise ValueError(f"{ENV_VAR}: unknown point {name!r}; known: {', '.join(POINTS)}")
            if spec.strip():
                self._points.add(spec.strip())

    def reached(self, point: str, seq: int | None = None) -> None:
        """Kills this process if it was asked to die at ``point`` (of commit ``seq``)."""
        if self._points and (point in self._points or f"{point}:{seq}" in self._points):
            os.kill(os.getpid(), signal.SIGKILL)
