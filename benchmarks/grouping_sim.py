"""Length-aware batching on a simulated clock: arrival order (FIFO) against grouping, with
and without the limit on how often a batch may pass an item over.

W1's shape without its model: 2,000 sentences of 8-48 words (uniform, seed 0), 64
closed-loop callers, one worker, ``max_batch_size=32`` (the W1 benchmark's settings). The
model pads every batch to its longest sentence: a batch takes
``(size x longest + BATCH_OVERHEAD) x UNIT`` seconds. It runs on asyncml's inline executor
on a fake clock: time only moves while the model sleeps, so a run takes about a second of
real time and gives the same figures every time.

Rows:

``ceiling``          the model called directly on batches of 32 in input order (the W1
                     benchmark's fixed-order ceiling): items/s only.
``sorted``           the same on batches of 32 sentences sorted by length: what grouping
                     could reach if every sentence were queued at once.
``fifo``             asyncml without ``item_cost``.
``grouped-nolimit``  asyncml with ``item_cost`` and the limit switched off (set higher than
                     any item reaches).
``grouped-K=n``      asyncml with ``item_cost`` and a limit of n passes; ``*`` marks the
                     library's own (``asyncml._grouping.PASS_LIMIT``).

``passed`` is the most times a batch passed one item over, as the library counts it: took a
newer item when a batch in arrival order would have held this one. ``overtaken`` is the most
batches that took a newer item while one item waited, wherever it stood in the queue.

To measure a checkout from before the limit existed, put its ``src`` first on PYTHONPATH:
its grouping then runs as it is, as the single ``grouped`` row.

Run:  python benchmarks/grouping_sim.py [--items 2000] [--callers 64] [--limits 1,2,3]
      [--max-batch-cost C] [--seeds N] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import asyncml
from asyncml import _grouping
from asyncml.executors import BatchDone, InlineExecutor

ROOT = Path(__file__).resolve().parents[1]
SEED = 0
MAX_BATCH_SIZE = 32
#: Seconds per word of padded batch: FIFO's p99 at 64 callers comes out near the 0.7 s
#: measured on W1.
UNIT = 0.00023
#: What every batch costs on top, in words: MiniLM on one CPU thread takes about as long for
#: a batch of one 8-word sentence as for 48 more words of a padded batch. Without it a batch
#: of one would be the fastest way to run anything, since it pads nothing.
BATCH_OVERHEAD = 48

Item = tuple[int, int]  # (input index, words)
Event = tuple[str, Any]  # ("queued", Item) or ("batch", list[Item])


def sentence_lengths(count: int, seed: int = SEED) -> list[int]:
    """W1-like sentence lengths: 8-48 words, uniform."""
    rng = random.Random(seed)
    return [rng.randint(8, 48) for _ in range(count)]


def batch_seconds(words: Sequence[int]) -> float:
    """What the simulated model takes for one batch: every sentence padded to the longest."""
    return (len(words) * max(words) + BATCH_OVERHEAD) * UNIT


def fixed_order_rate(lengths: Sequence[int]) -> float:
    """Items/s of the model called directly on consecutive batches of the given order."""
    size = MAX_BATCH_SIZE
    seconds = sum(batch_seconds(lengths[i : i + size]) for i in range(0, len(lengths), size))
    return len(lengths) / seconds


def passes(
    events: Sequence[Event], *, max_items: int, max_cost: float | None
) -> tuple[dict[int, int], dict[int, int]]:
    """For each item (by input index): how many batches passed it over, and how many
    overtook it.

    ``events`` are the items as they were queued and the batches as they were dispatched, in
    one sequence. A batch overtakes a queued item it does not take if it takes a newer one;
    it passes the item over if, besides, a batch in arrival order would have held it: it is
    among the oldest queued items, at most ``max_items`` and within ``max_cost``.
    """
    queue: list[Item] = []  # queued, in arrival order
    passed: dict[int, int] = {}
    overtaken: dict[int, int] = {}
    for kind, payload in events:
        if kind == "queued":
            queue.append(payload)
            continue
        taken = {index for index, _ in payload}
        turn, largest = 0, 0
        for _, words in queue[:max_items]:
            largest = max(largest, words)
            if turn and max_cost is not None and (turn + 1) * largest > max_cost:
                break
            turn += 1
        newest = max(position for position, (index, _) in enumerate(queue) if index in taken)
        for position, (index, _) in enumerate(queue[:newest]):
            if index not in taken:
                overtaken[index] = overtaken.get(index, 0) + 1
                if position < turn:
                    passed[index] = passed.get(index, 0) + 1
        queue = [entry for entry in queue if entry[0] not in taken]
    return passed, overtaken


class RecordingExecutor(InlineExecutor):
    """The inline executor, noting each batch as it is dispatched."""

    def __init__(self, events: list[Event]) -> None:
        super().__init__()
        self.events = events

    def submit(self, items: Sequence[Any], done: BatchDone) -> None:
        self.events.append(("batch", list(items)))
        super().submit(items, done)


@contextmanager
def pass_limit(limit: int) -> Iterator[None]:
    """Runs with the library's pass limit set to ``limit``."""
    saved = _grouping.PASS_LIMIT
    _grouping.PASS_LIMIT = limit
    try:
        yield
    finally:
        _grouping.PASS_LIMIT = saved


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def simulate(
    lengths: Sequence[int], callers: int, *, grouped: bool, max_batch_cost: float | None
) -> dict[str, Any]:
    """One closed-loop run on the fake clock; latencies in simulated time."""
    from tests.fakeclock import FakeClockLoop  # main() puts the repository root on sys.path

    events: list[Event] = []

    async def predict(batch: list[Item]) -> list[int]:
        await asyncio.sleep(batch_seconds([words for _, words in batch]))
        return [words for _, words in batch]

    async def main() -> tuple[list[float], float]:
        loop = asyncio.get_running_loop()
        latencies = [0.0] * len(lengths)
        async with asyncml.load(
            predict,
            executor=RecordingExecutor(events),
            max_batch_size=MAX_BATCH_SIZE,
            max_queue=max(callers, 1024),
            item_cost=(lambda item: item[1]) if grouped else None,
            max_batch_cost=max_batch_cost if grouped else None,
        ) as model:

            async def caller(first: int) -> None:
                for index in range(first, len(lengths), callers):
                    item = (index, lengths[index])
                    sent = loop.time()
                    events.append(("queued", item))  # the call below queues it at once
                    assert await model(item) == lengths[index]
                    latencies[index] = loop.time() - sent

            start = loop.time()
            async with asyncio.TaskGroup() as group:
                for first in range(min(callers, len(lengths))):
                    group.create_task(caller(first))
            return latencies, loop.time() - start

    with asyncio.Runner(loop_factory=FakeClockLoop) as runner:
        latencies, elapsed = runner.run(main())
    budget = max_batch_cost if grouped else None
    passed, overtaken = passes(events, max_items=MAX_BATCH_SIZE, max_cost=budget)
    sizes = [len(payload) for kind, payload in events if kind == "batch"]
    return {
        "items_per_s": len(lengths) / elapsed,
        "p50_ms": percentile(latencies, 0.50) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
        "max_ms": max(latencies) * 1000,
        "mean_batch": statistics.fmean(sizes),
        "passed_max": max(passed.values(), default=0),
        "overtaken_max": max(overtaken.values(), default=0),
    }


def measure(
    system: str, items: int, seeds: int, callers: int, grouped: bool, budget: float | None
) -> dict[str, Any]:
    """A row: the mean over ``seeds`` runs (the most for ``passed`` and ``overtaken``)."""
    runs = [
        simulate(sentence_lengths(items, SEED + n), callers, grouped=grouped, max_batch_cost=budget)
        for n in range(seeds)
    ]
    row: dict[str, Any] = {"system": system}
    for key in runs[0]:
        values = [run[key] for run in runs]
        row[key] = max(values) if key.endswith("_max") else statistics.fmean(values)
    return row


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=2_000)
    parser.add_argument("--callers", type=int, default=64)
    parser.add_argument("--limits", default="1,2,3", help="pass limits to compare")
    parser.add_argument("--max-batch-cost", type=float, default=None)
    parser.add_argument("--seeds", type=int, default=1, help="average over this many inputs")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))

    items, seeds, callers, budget = args.items, args.seeds, args.callers, args.max_batch_cost
    inputs = [sentence_lengths(items, SEED + n) for n in range(seeds)]
    rows: list[dict[str, Any]] = [
        {"system": "ceiling", "items_per_s": statistics.fmean(map(fixed_order_rate, inputs))},
        {"system": "sorted", "items_per_s": statistics.fmean(fixed_order_rate(sorted(lengths))
                                                             for lengths in inputs)},
        measure("fifo", items, seeds, callers, False, None),
    ]  # fmt: skip
    own = getattr(_grouping, "PASS_LIMIT", None)
    if own is None:  # a checkout from before the limit
        rows.append(measure("grouped", items, seeds, callers, True, budget))
    else:
        with pass_limit(items + 1):
            rows.append(measure("grouped-nolimit", items, seeds, callers, True, budget))
        for limit in sorted({int(n) for n in args.limits.split(",") if n} | {own}):
            with pass_limit(limit):
                row = measure(f"grouped-K={limit}", items, seeds, callers, True, budget)
            row["system"] += "*" if limit == own else ""
            rows.append({**row, "pass_limit": limit})
    ceiling = rows[0]["items_per_s"]
    for row in rows:
        row.update(items=items, callers=callers, seeds=seeds, max_batch_cost=budget)
        row["ratio_to_ceiling"] = row["items_per_s"] / ceiling

    print(
        f"W1-like simulation: {items} items x {seeds} seed(s), {callers} callers, "
        f"max_batch_size={MAX_BATCH_SIZE}, max_batch_cost={budget}, "
        f"batch = (size x longest + {BATCH_OVERHEAD}) x {UNIT * 1000:g} ms"
    )
    columns = ("items/s", "x ceil", "p50 ms", "p99 ms", "max ms", "batch", "passed", "overtaken")
    line = "{:<18}" + " {:>8}" * len(columns)
    print(line.format("system", *columns))
    for row in rows:
        cells = [f"{row['items_per_s']:.1f}", f"{row['ratio_to_ceiling']:.2f}"]
        if "p99_ms" in row:
            cells += [f"{row[key]:.0f}" for key in ("p50_ms", "p99_ms", "max_ms")]
            cells += [f"{row['mean_batch']:.1f}", str(row["passed_max"])]
            cells += [str(row["overtaken_max"])]
        else:
            cells += ["-"] * 6
        print(line.format(row["system"], *cells))
    text = json.dumps(rows, indent=1)
    if args.json is not None:
        args.json.write_text(text + "\n")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
