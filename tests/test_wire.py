"""Batches cross to worker processes as one message, same-shape arrays as one buffer."""

from __future__ import annotations

import pickle

import numpy as np

from asyncml.executors._wire import STACK_ROW_LIMIT, pack, unpack


def test_arrays_of_one_shape_travel_as_one_array() -> None:
    rows = [np.full(4, i, dtype=np.float32) for i in range(100)]
    payload = pack(rows)
    assert not isinstance(payload, list)
    back = unpack(pickle.loads(pickle.dumps(payload, protocol=5)))
    assert len(back) == 100
    for original, row in zip(rows, back, strict=True):
        np.testing.assert_array_equal(original, row)
        assert row.dtype == np.float32


def test_anything_else_travels_as_it_is() -> None:
    for items in (
        [1, 2, 3],
        [np.ones(3), np.ones(4)],
        [np.ones(3, dtype=np.float32), np.ones(3, dtype=np.float64)],
        [np.ones(3)],
        [np.float64(1.0), np.float64(2.0)],
        ["a", np.ones(2)],
    ):
        assert unpack(pack(items)) is items


def test_large_arrays_travel_unstacked() -> None:
    # Each one's buffer crosses out of band as it is: stacking would only add a copy.
    rows = [np.ones(STACK_ROW_LIMIT // 8 + 1) for _ in range(3)]
    assert pack(rows) is rows


def test_one_array_travels_as_it_is() -> None:
    # A batch's outputs returned as one array, or a batch that arrived as one array.
    batch = np.arange(12, dtype=np.float32).reshape(4, 3)
    back: object = unpack(pickle.loads(pickle.dumps(pack(batch), protocol=5)))
    assert isinstance(back, np.ndarray)
    np.testing.assert_array_equal(back, batch)
