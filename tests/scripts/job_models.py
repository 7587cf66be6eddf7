"""Models for the crash tests of ``asyncml run``, which run it in a subprocess.

Each item is a row ``{"v": int}``; the model returns ``2 * v``. Every computed item is
appended to the file named by ``ASYNCML_TEST_CALLS`` (one line per item), so a test can
check that no committed row was computed twice.
"""

from __future__ import annotations

import os
import threading
from typing import Any

_computed = 0


def counted(batch: list[dict[str, Any]]) -> list[int]:
    """Doubles each row's ``v``, logging which rows it computed."""
    values = [int(row["v"]) for row in batch]
    with open(os.environ["ASYNCML_TEST_CALLS"], "a") as log:
        log.write("".join(f"{v}\n" for v in values))
    return [2 * v for v in values]


def hangs_after(batch: list[dict[str, Any]]) -> list[int]:
    """Like :func:`counted`; once ``ASYNCML_TEST_HANG_AFTER`` items are computed, it says
    so on the FIFO ``ASYNCML_TEST_SIGNAL`` and blocks until the process is killed."""
    global _computed
    results = counted(batch)
    _computed += len(batch)
    if _computed >= int(os.environ["ASYNCML_TEST_HANG_AFTER"]):
        with open(os.environ["ASYNCML_TEST_SIGNAL"], "w") as fifo:
            fifo.write(f"{_computed}\n")
        threading.Event().wait()  # until SIGKILL
    return results


def dies_on_7(batch: list[dict[str, Any]]) -> list[int]:
    """Like :func:`counted`, but the worker process dies on the row whose ``v`` is 7."""
    if any(int(row["v"]) == 7 for row in batch):
        os._exit(3)
    return counted(batch)


def slows_after(batch: list[dict[str, Any]]) -> list[int]:
    """Like :func:`counted`; once ``ASYNCML_TEST_SLOW_AFTER`` items are computed, it says so
    on the FIFO ``ASYNCML_TEST_SIGNAL`` (once), then takes a moment per batch, so that the
    job is still running when the test interrupts it."""
    global _computed
    results = counted(batch)
    before, _computed = _computed, _computed + len(batch)
    threshold = int(os.environ["ASYNCML_TEST_SLOW_AFTER"])
    if before < threshold <= _computed:
        with open(os.environ["ASYNCML_TEST_SIGNAL"], "w") as fifo:
            fifo.write(f"{_computed}\n")
    if _computed >= threshold:
        threading.Event().wait(0.05)
    return results
