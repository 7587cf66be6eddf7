"""Length-aware batching: batches of items of similar cost, under a cost budget.

For models whose cost grows with the input (a transformer pads every sentence of a batch to
the longest one), a batch is best bounded by what it costs, not by how many items it holds,
and best made of items of similar size, so that little is spent on padding. The batcher
asks :func:`pick_similar` which queued items to send: always the oldest (so nothing
starves), then the items nearest to it in cost, while the padded cost of the batch (its
size times its largest item's cost) stays within the budget.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

#: How far past the oldest item the batcher looks for similar ones, in batches.
WINDOW_BATCHES = 8


@dataclass(frozen=True, slots=True)
class Grouping:
    """How a model's batches are grouped: ``item_cost(item)`` and an optional budget."""

    item_cost: Callable[[Any], float]
    max_batch_cost: float | None = None

    def __post_init__(self) -> None:
        if not callable(self.item_cost):
            raise TypeError(f"item_cost must be a function of one item, got {self.item_cost!r}")
        budget = self.max_batch_cost
        if budget is not None and (isinstance(budget, bool) or not budget > 0):
            raise ValueError(f"max_batch_cost must be a number > 0 or None, got {budget!r}")


def pick_similar(costs: Sequence[float], *, max_items: int, max_cost: float | None) -> list[int]:
    """Indices into ``costs`` of the next batch, in arrival order.

    ``costs[0]`` (the oldest item) is always included; the others are added nearest in cost
    first while the batch holds at most ``max_items`` and ``len(batch) * max(cost)`` stays
    within ``max_cost`` (a single item over the budget still goes alone).
    """
    anchor = costs[0]
    order = sorted(range(len(costs)), key=lambda i: (costs[i], i))
    low = high = order.index(0)
    largest = anchor
    chosen = [0]
    while len(chosen) < max_items:
        below = order[low - 1] if low > 0 else None
        above = order[high + 1] if high + 1 < len(order) else None
        if below is None and above is None:
            break
        # The nearer neighbour in cost first; the cheaper one if the dearer does not fit.
        candidates = [c for c in (below, above) if c is not None]
        candidates.sort(key=lambda i: abs(costs[i] - anchor))
        for candidate in candidates:
            grown = max(largest, costs[candidate])
            if max_cost is None or (len(chosen) + 1) * grown <= max_cost:
                break
        else:
            break
        chosen.append(candidate)
        largest = grown
        if candidate == below:
            low -= 1
        else:
            high += 1
    return sorted(chosen)
