"""What a batch's items (or outputs) look like on their way to or from a worker process.

Pickling costs per object: a batch of 256 small arrays pickled one by one costs far more than
the arrays' bytes. Small arrays of one shape and dtype are therefore sent as one stacked
array, a single buffer, and arrive as that array: a model that collates with ``"stack"``
gets it as it is, and one that takes a list gets its rows (views, no copies). Outputs that a
model returned as one array cross the same way, never split into rows on the way. Large
arrays travel as they are: each one's buffer crosses out of band (see ``_channel``), and
stacking would only add a copy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np

from .._batch import BatchOutcome, stack_uniform

#: Arrays up to this many bytes are stacked: pickling each costs more than copying it.
STACK_ROW_LIMIT = 16 * 1024


@dataclass(frozen=True, slots=True)
class _Rows:
    """A sequence of same-shape arrays, sent as one."""

    stacked: np.ndarray


def pack(items: Sequence[Any] | np.ndarray, *, stack: bool = True) -> Any:
    """What to send for ``items``: one stacked array where they allow it (and ``stack``:
    arrays in shared memory must cross as themselves, so that writes reach their owner)."""
    if isinstance(items, np.ndarray):
        return _Rows(items)  # already one array: a batch's outputs, or items from unpack()
    if not stack or len(items) < 2 or _large_array(items[0]):
        return items
    stacked = stack_uniform(items)
    return items if stacked is None else _Rows(stacked)


def unpack(payload: Any) -> Sequence[Any]:
    """The items :func:`pack` was given; arrays come back as one array, whose rows are the
    items."""
    if isinstance(payload, _Rows):
        return cast(Sequence[Any], payload.stacked)  # an array is the sequence of its rows
    return cast(Sequence[Any], payload)


def pack_outcome(outcome: BatchOutcome, *, stack: bool = True) -> BatchOutcome:
    return BatchOutcome(pack(outcome.values, stack=stack), outcome.errors)


def unpack_outcome(outcome: BatchOutcome) -> BatchOutcome:
    return BatchOutcome(unpack(outcome.values), outcome.errors)


def _large_array(item: Any) -> bool:
    return isinstance(item, np.ndarray) and item.nbytes > STACK_ROW_LIMIT
