"""Fewer garbage collections while a job runs.

A job allocates several objects per row (the parsed row, its item, its output record),
all short-lived and free of reference cycles, so reference counting frees them and the
cyclic collector finds nothing. At CPython's default threshold (a young collection every
700 allocations) it still ran about every ten rows, scanning the rows in flight, and cost
about a quarter of the CPU per row (W2 rows on two cores). The ``asyncml run`` command
raises the threshold for the run; a program calling ``run_job`` may do the same.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

#: Allocations between young collections while a job runs (CPython's default is 700).
JOB_GC_THRESHOLD = 50_000


@contextlib.contextmanager
def fewer_collections(threshold: int = JOB_GC_THRESHOLD) -> Iterator[None]:
    """Raises the collector's first threshold to ``threshold`` inside the block.

    The setting is process-wide, so use it where the job is the process's main work.
    """
    before = gc.get_threshold()
    gc.set_threshold(threshold, *before[1:])
    try:
        yield
    finally:
        gc.set_threshold(*before)
