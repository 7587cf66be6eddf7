"""Length-aware batching: similar items together, under a cost budget, oldest first."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import asyncml
from asyncml._grouping import pick_similar
from tests.helpers import GatedModel, until


@given(
    costs=st.lists(st.integers(1, 100), min_size=1, max_size=60),
    max_items=st.integers(1, 16),
    max_cost=st.none() | st.integers(1, 400),
)
def test_a_pick_is_the_oldest_and_its_nearest_neighbours_within_budget(
    costs: list[int], max_items: int, max_cost: int | None
) -> None:
    chosen = pick_similar([float(c) for c in costs], max_items=max_items, max_cost=max_cost)
    assert chosen[0] == 0
    assert chosen == sorted(set(chosen))
    assert len(chosen) <= max_items
    if max_cost is not None and len(chosen) > 1:
        assert len(chosen) * max(costs[i] for i in chosen) <= max_cost
    low, high = min(costs[i] for i in chosen), max(costs[i] for i in chosen)
    strictly_between = [i for i, c in enumerate(costs) if low < c < high and i not in chosen]
    assert not strictly_between, "a batch is a run of neighbours in cost"


def test_an_item_over_budget_goes_alone() -> None:
    assert pick_similar([500.0, 1.0, 1.0], max_items=8, max_cost=100) == [0]


async def test_queued_items_are_grouped_by_length_under_the_budget() -> None:
    model = GatedModel()
    model.gate.clear()
    async with asyncml.load(model, max_batch_size=4, item_cost=len, max_batch_cost=40) as m:
        blocker = asyncio.ensure_future(m("x"))
        await model.started.wait()
        texts = ["aa", "aaaaaaaaaa", "a", "aaaaaaaaa", "aaa", "aaaaaaaaaaa", "aa", "a"]
        calls = [asyncio.ensure_future(m(t)) for t in texts]
        await until(lambda: m.statistics().queued == len(texts))
        model.gate.set()
        assert await asyncio.gather(*calls) == [("out", t) for t in texts]
        await blocker
    lengths = [sorted(len(t) for t in batch) for batch in model.batches[1:]]
    # Short texts together, long ones together, the oldest queued text in each next batch
    # (a fourth long text would have cost 4 x 11 > 40).
    assert lengths == [[1, 1, 2, 2], [9, 10, 11], [3]]
    for batch in model.batches[1:]:
        assert len(batch) * max(len(t) for t in batch) <= 40 or len(batch) == 1


async def test_an_item_whose_cost_fails_fails_alone() -> None:
    def cost(item: Any) -> float:
        return float(len(item))

    async with asyncml.load(GatedModel(), item_cost=cost) as m:
        results = await m.map(["ab", 3, "c"], return_exceptions=True)
    assert results[0] == ("out", "ab")
    assert results[2] == ("out", "c")
    assert isinstance(results[1], asyncml.ModelError)
    assert "item_cost() failed: TypeError" in str(results[1])


class Embedder(asyncml.Model[str, int]):
    item_cost = staticmethod(len)
    max_batch_cost = 100.0

    def predict(self, batch: list[str]) -> list[int]:
        return [len(text) for text in batch]


async def test_a_model_class_sets_its_grouping() -> None:
    async with asyncml.load(Embedder) as m:
        assert await m.map(["a" * n for n in range(1, 30)]) == list(range(1, 30))
        stats = m.statistics()
    assert stats.completed == 29


def test_a_budget_needs_a_cost() -> None:
    with pytest.raises(ValueError, match="max_batch_cost needs item_cost"):
        asyncml.load(GatedModel(), max_batch_cost=10)
    with pytest.raises(ValueError, match="max_batch_cost must be"):
        asyncml.load(GatedModel(), item_cost=len, max_batch_cost=0)
