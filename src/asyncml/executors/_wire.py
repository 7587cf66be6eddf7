"""How a batch travels between the parent and a worker process: one message each way.

Pickling costs per object: a batch of 256 small arrays pickled one by one costs far more than
the arrays' bytes. Items (and outputs) that are plain arrays of one shape and dtype are
therefore sent as one stacked array, a single buffer, and split back into rows (views, no
copies) on arrival.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._batch import BatchOutcome, stack_uniform


@dataclass(frozen=True, slots=True)
class _Rows:
    """A sequence of same-shape arrays, sent as one."""

    stacked: np.ndarray


def pack(items: Sequence[Any]) -> Any:
    """What to send for ``items``: one stacked array where they allow it."""
    stacked = stack_uniform(items) if len(items) > 1 else None
    return items if stacked is None else _Rows(stacked)


def unpack(payload: Any) -> Sequence[Any]:
    """The items :func:`pack` was given (arrays come back as rows of one array)."""
    return list(payload.stacked) if isinstance(payload, _Rows) else payload


def pack_outcome(outcome: BatchOutcome) -> BatchOutcome:
    return BatchOutcome(pack(outcome.values), outcome.errors)


def unpack_outcome(outcome: BatchOutcome) -> BatchOutcome:
    return BatchOutcome(unpack(outcome.values), outcome.errors)
