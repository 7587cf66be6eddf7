"""Length-aware batching: batches of items of similar cost, under a cost budget.

For models whose cost grows with the input (a transformer pads every sentence of a batch to
the longest one), a batch is best bounded by what it costs, not by how many items it holds,
and best made of items of similar size, so that little is spent on padding. The batcher
asks a :class:`Grouper` which queued items to send: always the oldest, then, one at a time,
the item that adds the least padding, while the padded cost of the batch (its size times
its largest item's cost) stays within the budget.

Taking the oldest item is not enough to bound the wait: an item far in cost from the oldest
ones would be left behind by batch after batch of newer items, until it is the oldest
itself. So the grouper counts, for each queued item, the batches that passed it over: took
newer items when a batch in arrival order would have held it (it was among the oldest
items, as many as fit one batch). Batches that take newer items while it waits further back
do not count: with many items queued nearly every batch does, and counting them would send
most batches back to arrival order. An item passed over :data:`PASS_LIMIT` times is due: due
items go first into the next batch, in arrival order, and no newer item goes before a due
item.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

#: How far past the oldest item the batcher looks for similar ones, in batches.
WINDOW_BATCHES = 8

#: How many times a batch may pass an item over (take newer items when a batch in arrival
#: order would have held it) before the item goes first. With 1, an item whose turn has come
#: goes in that batch or the next, whatever its cost: grouping delays it by one batch at most
#: once its turn has come. A higher limit keeps more throughput when far more items are
#: queued than a batch holds (every due item pulls its batch towards arrival order), at one
#: more batch of delay per pass: on W1-like lengths with 64 callers
#: (benchmarks/grouping_sim.py) p99 is 1.0 s with 1 and 1.2 s with 2, against 0.73 s in
#: arrival order, for 3% more items/s.
PASS_LIMIT = 1


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


def fits(count: int, largest: float, max_cost: float | None) -> bool:
    """Whether ``count`` items whose dearest costs ``largest`` fit the budget ``max_cost``."""
    return max_cost is None or count * largest <= max_cost


def in_arrival_order(costs: Sequence[float], *, max_items: int, max_cost: float | None) -> int:
    """How many of the oldest items (``costs`` in arrival order) a batch would hold if batches
    went in arrival order: at most ``max_items``, within the budget, and at least one."""
    largest = costs[0]
    count = 1
    for cost in costs[1:max_items]:
        largest = max(largest, cost)
        if not fits(count + 1, largest, max_cost):
            break
        count += 1
    return count


def pick_similar(
    costs: Sequence[float],
    *,
    max_items: int,
    max_cost: float | None,
    due: Sequence[int] = (),
) -> list[int]:
    """Indices into ``costs`` (the window, oldest first) of the next batch, in arrival order.

    ``costs[0]`` (the oldest item) is always included, then the ``due`` items (indices in
    arrival order) while they fit; then, one at a time, the item that adds the least padding,
    while the batch holds at most ``max_items`` and ``len(batch) * max(cost)`` stays within
    ``max_cost`` (a single item over the budget still goes alone). An item below the batch's
    dearest adds its own shortfall as padding; one above it pads every item already in the
    batch up to its cost. If a due item does not fit, only items older than it are added,
    so that no newer item goes before it.
    """
    chosen = [0]
    largest = costs[0]
    end = len(costs)  # items from here on may not join this batch
    for index in due:
        if index == 0:
            continue
        grown = max(largest, costs[index])
        if len(chosen) == max_items or not fits(len(chosen) + 1, grown, max_cost):
            end = index
            break
        chosen.append(index)
        largest = grown
    picked = set(chosen)
    rest = [i for i in range(end) if i not in picked]
    # The candidates below the batch's dearest item, dearest first, and those above it,
    # cheapest first; the oldest first among equal costs.
    below = sorted((i for i in rest if costs[i] <= largest), key=lambda i: (-costs[i], i))
    above = sorted((i for i in rest if costs[i] > largest), key=lambda i: (costs[i], i))
    low = high = 0
    while len(chosen) < max_items:
        candidates: list[tuple[float, int]] = []  # (padding it adds, index)
        if low < len(below):
            candidates.append((largest - costs[below[low]], below[low]))
        if high < len(above):
            candidates.append((len(chosen) * (costs[above[high]] - largest), above[high]))
        # The one that adds less padding first (below on a tie); the other if it does not fit.
        candidates.sort(key=lambda candidate: candidate[0])
        for _, candidate in candidates:
            grown = max(largest, costs[candidate])
            if fits(len(chosen) + 1, grown, max_cost):
                break
        else:
            break
        chosen.append(candidate)
        largest = grown
        if low < len(below) and candidate == below[low]:
            low += 1
        else:
            high += 1
    return sorted(chosen)


class Grouper:
    """Picks the batches of one batcher, and counts how often each queued item was passed over.

    A batch passes over an item that a batch in arrival order would have held (see
    :func:`in_arrival_order`) if it does not take it but takes a newer item. Items are
    identified by a key (the batcher uses each item's future), and only those passed over at
    least once are counted, so an item that goes in its first batch costs nothing. The batcher
    calls :meth:`forget` for an item that leaves the queue without a batch.
    """

    __slots__ = ("_passes", "item_cost", "max_cost")

    def __init__(self, grouping: Grouping) -> None:
        self.item_cost = grouping.item_cost
        self.max_cost = grouping.max_batch_cost
        self._passes: dict[Hashable, int] = {}

    def __len__(self) -> int:
        """How many queued items are counted (passed over at least once)."""
        return len(self._passes)

    def pick(self, keys: Sequence[Hashable], costs: Sequence[float], max_items: int) -> list[int]:
        """The next batch, as indices into the window in arrival order.

        ``keys`` and ``costs`` describe the window, oldest first. Counts the items the batch
        passes over, and forgets those it takes.
        """
        passes = self._passes
        max_cost = self.max_cost
        due: list[int] = []
        if passes:
            limit = PASS_LIMIT
            due = [i for i, key in enumerate(keys) if passes.get(key, 0) >= limit]
        chosen = pick_similar(costs, max_items=max_items, max_cost=max_cost, due=due)
        turn = in_arrival_order(costs, max_items=max_items, max_cost=max_cost)
        taken = set(chosen)
        for index in range(min(turn, chosen[-1])):  # older than the newest item taken
            if index not in taken:
                key = keys[index]
                passes[key] = passes.get(key, 0) + 1
        if passes:
            for index in chosen:
                passes.pop(keys[index], None)
        return chosen

    def forget(self, key: Hashable) -> None:
        """Stops counting an item that left the queue without a batch."""
        self._passes.pop(key, None)

    def clear(self) -> None:
        """Stops counting every item."""
        self._passes.clear()
