"""Fewer garbage collections where asyncml's work is the process's main work.

A job, or a server under load, allocates several objects per row or request (the parsed row
or body, its item, its output record, the response), short-lived and mostly free of
reference cycles, so reference counting frees them and the cyclic collector finds nothing.
At CPython's default threshold (a young collection every 700 allocations) it still runs
about every ten rows, scanning the rows in flight: about a quarter of the CPU per row of a
job (W2 rows on two cores). Under a server's sustained load the same young collections
come every few requests, and now and then they trigger a full collection that scans every
object of the process, the models' and their weights' Python objects included: about
100 ms, seen as p99 spikes in open-loop runs.

``asyncml run`` raises the threshold for the run; ``asyncml serve``, once every model is
loaded, also freezes what start-up created (``gc.freeze()``), so that full collections skip
it. Both settings are process-wide: the library's ``run_job`` and ``create_app`` leave them
alone, and a program whose main work is the job or the server may use
:func:`fewer_collections` itself.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

#: Allocations between young collections (CPython's default is 700).
GC_THRESHOLD = 50_000


@contextlib.contextmanager
def fewer_collections(threshold: int = GC_THRESHOLD, *, freeze: bool = False) -> Iterator[None]:
    """Raises the collector's first threshold to ``threshold`` inside the block.

    With ``freeze``, first collects once, then moves every object left (modules, models,
    their weights' Python objects: what start-up made) to the permanent generation, which
    no collection scans (:func:`gc.freeze`); they return to the oldest generation on exit,
    unless something was frozen before.

    The settings are process-wide, so use it where the job, or the server, is the process's
    main work.
    """
    before = gc.get_threshold()
    # Unfreezing is all or nothing: what another part of the program froze stays frozen.
    unfreeze = freeze and gc.get_freeze_count() == 0
    if freeze:
        gc.collect()  # start-up's garbage is freed, not frozen for good
        gc.freeze()
    gc.set_threshold(threshold, *before[1:])
    try:
        yield
    finally:
        gc.set_threshold(*before)
        if unfreeze:
            gc.unfreeze()
