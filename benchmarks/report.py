"""From per-run results to rows: medians over repeats, ratios, and the printed table.

Every ratio compares figures measured in the same invocation, on the same machine, with the
runs of all systems interleaved: a ratio is meaningful, an absolute items/s across runs or
machines much less so. A ratio is the median over repeats of the ratio within each repeat,
so that a slow spell of the machine during one repeat weighs on both sides of it.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

#: Peers that batch nothing: the recipes asyncml replaces.
NAIVE_PEERS = ("naive-thread", "naive-process", "thread-pool")
#: Rows that are reference points rather than peers.
REFERENCES = ("ceiling", "floor")


@dataclass
class Row:
    """One (workload, system, callers, config) cell: medians over its repeats.

    ``callers`` is 0 for systems with no closed-loop callers (the ceiling, the thread pool);
    such peers are compared with the asyncml rows at every caller count. ``runs`` and
    ``runs_p50_ms`` hold each repeat's figure, ``None`` where that repeat failed.
    """

    workload: str
    system: str
    callers: int
    items: int
    config: str | None
    items_per_s: float | None
    p50_ms: float | None
    p99_ms: float | None
    peak_rss_mb: float | None
    runs: list[float | None]
    runs_p50_ms: list[float | None]
    batch_size: int | None = None
    mean_batch_size: float | None = None
    loop_lag_p99_ms: float | None = None
    mismatches: int = 0
    errors: list[str] = field(default_factory=list)
    ratio_to_ceiling: float | None = None
    ratio_to_floor: float | None = None
    ratio_to_peers: dict[str, float] = field(default_factory=dict)
    best_naive: str | None = None
    p50_ratio_to_direct: float | None = None


def summarise(
    workload: str,
    system: str,
    callers: int,
    items: int,
    config: str | None,
    repeats: Sequence[dict[str, Any] | None],
    errors: Sequence[str],
) -> Row:
    """The row of one configuration from each repeat's result (``None``: it failed)."""
    results = [r for r in repeats if r is not None]
    sizes = [r["batch_size"] for r in results if r["batch_size"] is not None]
    return Row(
        workload=workload,
        system=system,
        callers=callers,
        items=items,
        config=config,
        items_per_s=_median(results, "items_per_s"),
        p50_ms=_median(results, "p50_ms"),
        p99_ms=_median(results, "p99_ms"),
        peak_rss_mb=_median(results, "peak_rss_mb"),
        runs=[None if r is None else r["items_per_s"] for r in repeats],
        runs_p50_ms=[None if r is None else r["p50_ms"] for r in repeats],
        batch_size=Counter(sizes).most_common(1)[0][0] if sizes else None,
        mean_batch_size=_median(results, "mean_batch_size"),
        loop_lag_p99_ms=_median(results, "loop_lag_p99_ms"),
        mismatches=max((r["mismatches"] for r in results), default=0),
        errors=list(errors),
    )


def _median(results: Sequence[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in results if r[key] is not None]
    return statistics.median(values) if values else None


def add_ratios(rows: Sequence[Row]) -> None:
    """Fills in each row's ratios to the ceiling, the floor and (asyncml rows) the peers."""
    for row in rows:
        same = [r for r in rows if r.workload == row.workload and r.items_per_s]
        ceiling = next((r for r in same if r.system == "ceiling"), None)
        floor = next((r for r in same if r.system == "floor"), None)
        row.ratio_to_ceiling = _ratio(row.runs, ceiling)
        row.ratio_to_floor = _ratio(row.runs, floor)
        if not row.system.startswith("asyncml"):
            continue
        peers = [
            r
            for r in same
            if r.system not in REFERENCES
            and not r.system.startswith("asyncml")
            and r.callers in (0, row.callers)
        ]
        row.ratio_to_peers = {
            p.system: ratio for p in peers if (ratio := _ratio(row.runs, p)) is not None
        }
        naive = [p for p in peers if p.system in NAIVE_PEERS]
        if naive:
            row.best_naive = max(naive, key=lambda p: p.items_per_s or 0.0).system
        direct = next((p for p in peers if p.system == "direct-thread"), None)
        if direct is not None:
            row.p50_ratio_to_direct = _paired_ratio(row.runs_p50_ms, direct.runs_p50_ms)


def _ratio(runs: Sequence[float | None], reference: Row | None) -> float | None:
    return None if reference is None else _paired_ratio(runs, reference.runs)


def _paired_ratio(
    values: Sequence[float | None], references: Sequence[float | None]
) -> float | None:
    """The median of ``value / reference`` over the repeats where both were measured."""
    ratios = [
        value / reference
        for value, reference in zip(values, references, strict=True)
        if value is not None and reference
    ]
    return statistics.median(ratios) if ratios else None


_COLUMNS = (
    ("workload", "<"),
    ("system", "<"),
    ("callers", ">"),
    ("items/s", ">"),
    ("p50 ms", ">"),
    ("p99 ms", ">"),
    ("RSS MB", ">"),
    ("batch", ">"),
    ("lag p99", ">"),
    ("x ceiling", ">"),
    ("x floor", ">"),
    ("x hand", ">"),
    ("x best naive", "<"),
    ("config", "<"),
)


def format_table(rows: Sequence[Row]) -> str:
    """The rows as a fixed-width text table."""
    cells = [[name for name, _ in _COLUMNS]]
    cells += [_cells(row) for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(_COLUMNS))]
    lines = [
        "  ".join(
            f"{cell:{align}{width}}"
            for cell, (_, align), width in zip(line, _COLUMNS, widths, strict=True)
        ).rstrip()
        for line in cells
    ]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def _cells(row: Row) -> list[str]:
    batch = row.batch_size if row.batch_size is not None else row.mean_batch_size
    best = ""
    if row.best_naive is not None:
        best = f"{_times(row.ratio_to_peers.get(row.best_naive))} {row.best_naive}"
    return [
        row.workload,
        row.system + (" (FAILED)" if row.items_per_s is None else ""),
        str(row.callers) if row.callers else "-",
        _number(row.items_per_s, ",.0f"),
        _number(row.p50_ms, ".3f"),
        _number(row.p99_ms, ".3f"),
        _number(row.peak_rss_mb, ".0f"),
        _number(batch, ".1f") if isinstance(batch, float) else _number(batch, "d"),
        _number(row.loop_lag_p99_ms, ".2f"),
        _times(row.ratio_to_ceiling),
        _times(row.ratio_to_floor),
        _times(row.ratio_to_peers.get("hand-batcher")),
        best,
        row.config or "",
    ]


def _number(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _times(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3g}x"
