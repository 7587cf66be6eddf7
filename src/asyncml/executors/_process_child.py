"""The program a worker process runs: build the model, then answer one batch per message.

Messages from the parent: a batch (see ``_channel``), or ``None`` (close and exit).
Messages to the parent: ``("ready", shared)`` (whether the worker can map the parent's
shared arrays, see ``_shared``) or ``("failed", error)`` after start-up, one
outcome per batch, and ``("closed", error_or_none)`` before a clean exit.
A parent that dies closes the pipe: the worker sees end-of-file and exits; a worker busy
with a batch or in ``setup()`` notices within half a second (a thread watches its parent),
so no worker outlives its parent.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import threading
import time
from collections.abc import Sequence
from functools import partial
from multiprocessing.connection import Connection
from typing import Any

from .._batch import BatchOutcome, run_batch
from .._errors import ModelError
from .._model import Model, ModelSpec
from .._threads import IntraOpLimit, limit_pools_loaded_later
from ._channel import ParentGone, WorkerChannel
from ._shared import readable_from
from ._shm import sweep

#: Seconds between a worker's checks that its parent still lives.
PARENT_CHECK_S = 0.5


def serve(conn: Connection, name: str, pickled_spec: bytes, threads: int | None) -> None:
    """Runs in the worker process until told to stop or orphaned.

    The model comes pickled, to be unpickled only once the thread-pool variables are set:
    unpickling imports its modules, and with them the libraries those variables size.
    """
    # Ctrl-C reaches the whole process group; the parent decides how its workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    limit_pools_loaded_later(threads)
    limit = IntraOpLimit(threads)  # this whole process is the worker's: never released
    parent = os.getppid()
    watch = threading.Thread(
        target=_exit_with, args=(parent,), name="asyncml-parent-watch", daemon=True
    )
    watch.start()
    model: Model[Any, Any] | None = None
    try:
        spec: ModelSpec = pickle.loads(pickled_spec)
        created = spec.create()
        created.setup()
        model = created  # close() releases what setup() acquired, also if warmup() fails
        limit.apply()  # to what was loaded before the variables were set: numpy, say
        model.warmup()
    except BaseException as exc:
        if model is not None:
            with contextlib.suppress(BaseException):
                model.close()
        conn.send(("failed", ModelError.from_exception(exc, model=name)))
        return
    conn.send(("ready", readable_from(parent)))
    channel = WorkerChannel(conn, spec.name)
    try:
        while (frame := channel.receive()) is not None:
            channel.answer(frame, partial(_run, model, spec, limit))
    except ParentGone:
        if os.getppid() != parent:  # it was killed: remove names it had no time to pass on
            sweep(parent)
        return
    error = None
    try:
        model.close()
    except BaseException as exc:
        error = ModelError.from_exception(exc, model=spec.name)
    conn.send(("closed", error))


def _exit_with(parent: int) -> None:
    """Ends this worker soon after its parent dies, whatever it is doing: the pipe tells
    only when next used, and a long batch or a hung ``setup()`` would keep an orphan (and
    its shared memory) alive for as long as it runs."""
    while True:
        time.sleep(PARENT_CHECK_S)
        if os.getppid() != parent:
            sweep(parent)  # names the dead parent can no longer remove
            os._exit(1)


def _run(
    model: Model[Any, Any], spec: ModelSpec, limit: IntraOpLimit, items: Sequence[Any]
) -> BatchOutcome:
    try:
        return run_batch(model, spec, items)
    except BaseException as exc:  # e.g. SystemExit raised by the model's code
        return BatchOutcome.failure(len(items), ModelError.from_exception(exc, model=spec.name))
    finally:
        limit.cover_new_libraries()  # before the answer lets the next batch come
