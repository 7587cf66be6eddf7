"""Arrays made with ``asyncml.shared_array`` cross to process workers and back with no copy:
the worker maps the caller's memory, and nothing of it outlives the arrays.

Checked with the real thing: the memory is a memfd, which /proc/<pid>/maps lists as
``/memfd:asyncml-shared``, and /proc/<pid>/fd shows the parent's descriptors.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import signal
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.testing import assert_array_equal

import asyncml
from asyncml.executors import BatchOutcome, _shared
from tests import process_models as models
from tests.test_process_executor import no_leaked_processes  # noqa: F401  (autouse)
from tests.test_shared_memory import channel, shm_names

pytestmark = pytest.mark.skipif(not _shared.available(), reason="needs memfd_create and /proc")


def open_shared_files() -> int:
    """The shared arrays this process holds a descriptor of (mmap holds a second one)."""
    inodes = set()
    for fd in Path("/proc/self/fd").iterdir():
        with contextlib.suppress(OSError):  # the descriptor that listed the folder is gone
            if "memfd:asyncml-shared" in os.readlink(fd):
                inodes.add(fd.stat().st_ino)
    return len(inodes)


def test_a_shared_array_is_a_zeroed_array_of_the_shape_and_dtype_asked() -> None:
    array = asyncml.shared_array((3, 4), "int16")
    assert array.shape == (3, 4)
    assert array.dtype == np.int16
    assert array.flags.c_contiguous
    assert_array_equal(array, np.zeros((3, 4), np.int16))
    assert asyncml.shared_array(0).shape == (0,)
    assert asyncml.shared_array(5).dtype == np.float64
    with pytest.raises(ValueError, match="negative"):
        asyncml.shared_array((2, -1))


def test_elsewhere_a_shared_array_is_an_ordinary_array() -> None:
    array = asyncml.shared_array((2, 2))
    array[:] = 7
    copy = pickle.loads(pickle.dumps(array, protocol=5))
    assert_array_equal(copy, array)
    assert not np.shares_memory(copy, array)


async def test_the_worker_reads_and_returns_the_callers_memory() -> None:
    shared = asyncml.shared_array((500, 500), np.float32)
    shared[:] = 3
    plain = np.full((500, 500), 3, np.float32)
    async with asyncml.load(models.identity, executor="process", max_batch_size=4) as m:
        from_shared, from_plain = await asyncio.gather(m(shared), m(plain))
    assert_array_equal(from_shared, shared)
    assert np.shares_memory(from_shared, shared)  # no copy either way
    assert_array_equal(from_plain, plain)
    assert not np.shares_memory(from_plain, plain)  # an ordinary array is copied


async def test_a_model_writing_into_its_input_writes_into_the_callers_array() -> None:
    shared = asyncml.shared_array(100_000)
    shared[:] = 1
    async with asyncml.load(models.doubles_in_place, executor="process") as m:
        assert await m(shared) == 200_000
        assert await m(shared[:50_000]) == 200_000  # a view: its part only, doubled again
    assert shared[0] == 4
    assert shared[-1] == 2


async def test_small_shared_arrays_batched_together_stay_the_callers() -> None:
    arrays = [asyncml.shared_array(100, np.float32) for _ in range(4)]  # stacked if ordinary
    async with asyncml.load(models.add_one_in_place, executor="process", max_batch_size=8) as m:
        outputs = await m.map(arrays)
    assert [float(a[0]) for a in arrays] == [1.0] * 4
    assert all(np.shares_memory(o, a) for o, a in zip(outputs, arrays, strict=True))


async def test_shared_memory_goes_with_the_arrays_in_both_processes() -> None:
    before = await asyncio.to_thread(open_shared_files)
    async with asyncml.load(models.shared_maps, executor="process") as m:
        arrays = [asyncml.shared_array(100_000) for _ in range(3)]
        await m.map(arrays)
        assert await m(arrays[0]) == 3
        assert await asyncio.to_thread(open_shared_files) == before + 3
        del arrays
        # The worker unmaps them when the next batch tells it they are gone.
        assert await m(np.zeros(100_000)) == 0
        assert await asyncio.to_thread(open_shared_files) == before


async def test_a_shared_array_survives_its_worker_being_killed() -> None:
    shared = asyncml.shared_array(200_000)
    shared[:] = 1
    async with asyncml.load(models.pids, executor="process", workers=1) as m:
        worker = await m(shared)
        os.kill(worker, signal.SIGKILL)
        replacement = await m(shared)  # retried or sent to the replacement, mapped anew
    assert replacement != worker
    assert shared.sum() == 200_000
    assert not await asyncio.to_thread(shm_names, os.getpid())


def test_a_worker_that_cannot_map_them_gets_copies() -> None:
    shared = asyncml.shared_array(100_000)
    shared[:] = 5

    def sums(items: Sequence[Any]) -> BatchOutcome:
        return BatchOutcome([float(x.sum()) for x in items])

    with channel(sums) as parent:  # a channel made without ``shared``, as for such a worker
        outcome = parent.exchange([shared], timeout=10)
    assert outcome.values[0] == 500_000
