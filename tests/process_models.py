"""Models for process-worker tests: module level, so that spawned workers can import them."""

from __future__ import annotations

import ctypes
import importlib
import multiprocessing
import os
import socket
import time
from typing import Any

import numpy as np

import asyncml


def triple(batch: list[int]) -> list[int]:
    return [3 * x for x in batch]


def triple_steadily(batch: list[int]) -> list[int]:
    """``triple`` at about 200 batches a second per worker: a run lasts long enough for a
    test to kill workers during it."""
    time.sleep(0.005)
    return [3 * x for x in batch]


def pids(batch: list[Any]) -> list[int]:
    return [os.getpid() for _ in batch]


def exit_on_13(batch: list[int]) -> list[int]:
    """Kills its own worker (exit code 3) whenever the batch holds 13."""
    if 13 in batch:
        os._exit(3)
    return [3 * x for x in batch]


def segfault_on_13(batch: list[int]) -> list[int]:
    """Segfaults its worker whenever the batch holds 13."""
    if 13 in batch:
        ctypes.string_at(0)  # reads address 0: SIGSEGV
    return [3 * x for x in batch]


def hang_on_13(batch: list[int]) -> list[int]:
    """Never returns when the batch holds 13."""
    while 13 in batch:
        time.sleep(1)
    return [3 * x for x in batch]


class CountsSetups(asyncml.Model[int, int]):
    """Appends its pid to a file at each setup(), so a test can count them."""

    def __init__(self, path: str) -> None:
        self.path = path

    def setup(self) -> None:
        with open(self.path, "a") as log:
            log.write(f"{os.getpid()}\n")

    def predict(self, batch: list[int]) -> list[int]:
        return batch


class FailsSetup(asyncml.Model[int, int]):
    def setup(self) -> None:
        raise FileNotFoundError("no weights at /nowhere/model.bin")

    def predict(self, batch: list[int]) -> list[int]:
        return batch


def square(x: int) -> int:
    return x * x


def square_unless_13(x: int) -> int:
    """Kills its worker on 13, raises on 7, squares the rest."""
    if x == 13:
        os._exit(3)
    if x == 7:
        raise ValueError("seven is not welcome")
    return x * x


def doubled_rows(batch: list[Any]) -> list[Any]:
    """Arrays in, arrays out: each row doubled."""
    return [row * 2 for row in batch]


def identity(batch: list[Any]) -> list[Any]:
    """Returns the very arrays it was given."""
    return batch


class KeepsInputs(asyncml.Model[Any, bool]):
    """Keeps every input array it is given; each output says whether all of them still hold
    the values they arrived with."""

    def __init__(self) -> None:
        self.kept: list[Any] = []
        self.sums: list[float] = []

    def predict(self, batch: list[Any]) -> list[bool]:
        self.kept.extend(batch)
        self.sums.extend(float(x.sum()) for x in batch)
        intact = all(float(x.sum()) == s for x, s in zip(self.kept, self.sums, strict=True))
        return [intact for _ in batch]


class HoldsBatches(asyncml.Model[Any, Any]):
    """Identity, but each batch first sends the worker's pid to a TCP server on 127.0.0.1
    and waits until the server closes the connection: the test decides when batches end."""

    def __init__(self, port: int) -> None:
        self.port = port

    def predict(self, batch: list[Any]) -> list[Any]:
        with socket.create_connection(("127.0.0.1", self.port)) as conn:
            conn.sendall(f"{os.getpid()}\n".encode())
            while conn.recv(1):
                pass
        return batch


class DoublesStacked(asyncml.Model[Any, Any]):
    """Takes its batch as one array and returns one array: each row doubled. A row with a
    negative value makes the whole batch fail."""

    collate = "stack"

    def predict(self, rows: Any) -> Any:
        if (rows < 0).any():
            raise ValueError("negative row")
        return rows * 2


class ReportsCopies(asyncml.Model[Any, bool]):
    """Says, for each item, whether its batch arrived as an array of its own (a copy)."""

    collate = "stack"

    def predict(self, rows: Any) -> list[bool]:
        owner = rows
        while isinstance(owner.base, np.ndarray):
            owner = owner.base
        # A view of the bytes that arrived has a buffer at the root; a copy, a numpy array.
        copied = owner.base is None
        return [copied] * len(rows)


def twice_v(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A job's model of whole rows: fails for a row whose ``v`` is 13 (and one without ``v``)."""
    out = []
    for row in batch:
        if row["v"] == 13:
            raise ValueError("unlucky 13")
        out.append({"twice": 2 * row["v"]})
    return out


def doubles_in_place(batch: list[Any]) -> list[float]:
    """Doubles each array where it lies; returns each one's new sum."""
    for array in batch:
        array *= 2
    return [float(array.sum()) for array in batch]


def shared_maps(batch: list[Any]) -> list[int]:
    """How many shared arrays of its parent this worker maps (its /proc/self/maps lines)."""
    with open("/proc/self/maps") as maps:
        mapped = sum("memfd:asyncml-shared" in line for line in maps)
    return [mapped] * len(batch)


def late_blas_threads(batch: list[Any]) -> list[int]:
    """The largest BLAS/OpenMP pool once scipy's BLAS is loaded, which happens here, long after
    the worker applied its thread limit to the libraries it had loaded."""
    from threadpoolctl import threadpool_info

    importlib.import_module("scipy.linalg")

    threads = max(pool["num_threads"] for pool in threadpool_info())
    return [threads for _ in batch]


def _refuse_outside_a_worker() -> str:
    if multiprocessing.parent_process() is None:  # the parent: the main process
        raise ValueError("this output only unpickles in a worker")
    return "unpickled"


class ReadableInWorkersOnly:
    """Pickles anywhere; unpickles in a worker process only."""

    def __reduce__(self) -> tuple[Any, tuple[()]]:
        return _refuse_outside_a_worker, ()


def unreadable_outputs_for_negatives(batch: list[int]) -> list[Any]:
    return [ReadableInWorkersOnly() if x < 0 else x for x in batch]


def callbacks_for_negatives(batch: list[int]) -> list[Any]:
    """Outputs that do not pickle (lambdas) for negative items."""
    return [(lambda x=x: x) if x < 0 else x for x in batch]


def _refuse_in_a_worker() -> str:
    if multiprocessing.parent_process() is not None:
        raise ValueError("this input only unpickles in the parent")
    return "unpickled"


class ReadableInParentOnly:
    """Pickles anywhere; unpickles in the main process only."""

    def __reduce__(self) -> tuple[Any, tuple[()]]:
        return _refuse_in_a_worker, ()


def add_one_in_place(batch: list[Any]) -> list[Any]:
    for array in batch:
        array += 1
    return batch


def hang_on_3(x: int) -> int:
    if x == 3:
        time.sleep(3600)
    return x


class SlowSetup(asyncml.Model[int, int]):
    """A model that takes a minute to load."""

    def setup(self) -> None:
        time.sleep(60)

    def predict(self, batch: list[int]) -> list[int]:
        return batch
