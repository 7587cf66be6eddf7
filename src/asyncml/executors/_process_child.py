"""The program a worker process runs: build the model, then answer one batch per message.

Messages from the parent: a sequence of items (run it), or ``None`` (close and exit).
Messages to the parent: ``("ready", None)`` or ``("failed", error)`` after start-up, one
:class:`BatchOutcome` per batch, and ``("closed", error_or_none)`` before a clean exit.
A parent that dies closes the pipe: the worker sees end-of-file and exits, so no worker
outlives its parent.
"""

from __future__ import annotations

import signal
from multiprocessing.connection import Connection

from .._batch import BatchOutcome, run_batch
from .._errors import ModelError
from .._model import ModelSpec
from .._threads import IntraOpLimit
from ._wire import pack_outcome, unpack


def serve(conn: Connection, spec: ModelSpec, threads: int | None) -> None:
    """Runs in the worker process until told to stop or orphaned."""
    # Ctrl-C reaches the whole process group; the parent decides how its workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        model = spec.create()
        model.setup()
        IntraOpLimit(threads).apply()  # this whole process is the worker's: never released
        model.warmup()
    except BaseException as exc:
        conn.send(("failed", ModelError.from_exception(exc, model=spec.name)))
        return
    conn.send(("ready", None))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return  # the parent is gone
        if message is None:
            break
        items = unpack(message)
        try:
            outcome = run_batch(model, spec, items)
        except BaseException as exc:  # e.g. SystemExit raised by the model's code
            outcome = BatchOutcome.failure(
                len(items), ModelError.from_exception(exc, model=spec.name)
            )
        conn.send(pack_outcome(outcome))
    error = None
    try:
        model.close()
    except BaseException as exc:
        error = ModelError.from_exception(exc, model=spec.name)
    conn.send(("closed", error))
