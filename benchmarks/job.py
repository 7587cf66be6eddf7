"""Benchmark of batch jobs: a million JSONL rows through W2's model, end to end.

::

    python benchmarks/job.py [--rows N] [--repeats N] [--executors thread,process] [--quick]
                             [--json PATH]

Each run reads the rows (``{"pixels": [64 values]}``, drawn from the bundled digits with
seed 0), runs W2's classifier on each row's pixels, and writes ``{"id", "prediction"}``
lines, through :func:`asyncml.job.run_job` as ``asyncml run --field pixels`` does. Systems:

- ``journal``: the job as shipped: committed parts, a SQLite journal, fsyncs;
- ``no-journal``: the same job with ``use_journal=False`` (the same parts and final
  assembly, without journal or fsync): the difference is what exactly-once costs;
- ``by-hand``: the same work in one plain loop, no asyncml, no threads: read 1 MiB blocks,
  ``orjson.loads`` each line, predict 256 rows at a time, ``orjson.dumps`` each result.

Every system runs with the garbage-collector threshold ``asyncml run`` sets
(:func:`asyncml.job.fewer_collections`).

Every run is a fresh child process (its peak RSS is its own); repeats are interleaved and
each row reports medians. rows/s counts from the model being ready to the output being in
place, so the model's setup is left out.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson

HERE = Path(__file__).resolve().parent
SEED = 0
TARGET_ROWS_PER_S = 100_000
TARGET_PEAK_RSS_MB = 300
TARGET_JOURNAL_COST = 0.05


def write_rows(path: Path, rows: int, cache_dir: Path) -> None:
    """``rows`` lines of ``{"pixels": [...]}``, picked from the digits with seed 0."""
    from workloads import _trained_digits

    pixels = np.rint(_trained_digits(cache_dir)[1] * 16).astype(int).tolist()
    lines = [orjson.dumps({"pixels": row}) + b"\n" for row in pixels]
    picks = np.random.default_rng(SEED).integers(0, len(lines), size=rows)
    with path.open("wb") as file:
        for start in range(0, rows, 65_536):
            file.write(b"".join([lines[i] for i in picks[start : start + 65_536]]))


def measure(system: str, executor: str, rows_path: Path, cache_dir: Path) -> dict[str, Any]:
    """One run, in this process."""
    import resource

    output = rows_path.with_name(f"out-{os.getpid()}.jsonl")
    if system == "by-hand":
        from asyncml.job import fewer_collections

        with fewer_collections():  # the same garbage-collector setting as the jobs
            elapsed = by_hand(rows_path, output, cache_dir)
    else:
        import asyncio

        from job_model import DigitsRows

        from asyncml.job import fewer_collections, run_job

        with fewer_collections():  # as asyncml run does
            summary = asyncio.run(
                run_job(
                    DigitsRows(str(cache_dir)),
                    rows_path,
                    output,
                    field="pixels",
                    executor=executor,  # type: ignore[arg-type]
                    use_journal=system == "journal",
                    force=True,
                )
            )
        elapsed = summary.wall_s - summary.setup_s
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # before the check
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    written = check_output(output, rows_path, cache_dir)
    output.unlink()
    return {
        "system": system,
        "executor": executor if system != "by-hand" else "-",
        "rows": written,
        "elapsed_s": elapsed,
        "rows_per_s": written / elapsed,
        "peak_rss_mb": own / 2**20,
        "worker_peak_rss_mb": workers / 2**20 if executor == "process" else 0.0,
    }


def by_hand(rows_path: Path, output: Path, cache_dir: Path) -> float:
    """The job's work in one plain loop: the reference for what it costs without asyncml."""
    from threadpoolctl import threadpool_limits
    from workloads import _trained_digits

    threadpool_limits(1)
    classifier = _trained_digits(cache_dir)[0]
    started = time.perf_counter()
    row = 0
    with rows_path.open("rb") as source, output.open("wb") as sink:
        carry = b""
        while block := source.read(1 << 20):
            block = carry + block
            cut = block.rfind(b"\n") + 1
            carry = block[cut:]
            pixels = [orjson.loads(line)["pixels"] for line in block[:cut].splitlines()]
            for start in range(0, len(pixels), 256):
                batch = np.asarray(pixels[start : start + 256], dtype=np.float64) / 16.0
                labels = classifier.predict(batch).tolist()
                sink.write(
                    b"".join(
                        orjson.dumps({"id": row + i, "prediction": label}) + b"\n"
                        for i, label in enumerate(labels)
                    )
                )
                row += len(labels)
    return time.perf_counter() - started


def check_output(output: Path, rows_path: Path, cache_dir: Path) -> int:
    """Every row once, in order, with the right label for a sample of them."""
    from workloads import _trained_digits

    classifier = _trained_digits(cache_dir)[0]
    every = 997  # a sample of rows, parsed; the rest only counted
    inputs, got = [], []
    rows = count = 0
    with rows_path.open("rb") as file:
        for rows, line in enumerate(file, 1):
            if (rows - 1) % every == 0:
                inputs.append(orjson.loads(line)["pixels"])
    with output.open("rb") as file:
        for count, line in enumerate(file, 1):
            if (count - 1) % every == 0:
                got.append(orjson.loads(line))
    if count != rows:
        raise RuntimeError(f"{count} output rows for {rows} input rows")
    expected = classifier.predict(np.asarray(inputs) / 16.0).tolist()
    if [g["id"] for g in got] != list(range(0, count, every)):
        raise RuntimeError("output rows are missing, repeated or out of order")
    if [g["prediction"] for g in got] != expected:
        raise RuntimeError("wrong predictions")
    return count


def run_child(system: str, executor: str, rows_path: Path, cache_dir: Path) -> dict[str, Any]:
    command = [sys.executable, __file__, "--one", system, executor, str(rows_path), str(cache_dir)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"{system}/{executor} failed: {done.stderr.strip()[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def summarise(runs: dict[tuple[str, str], list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per system: medians, and the journal's cost within each repeat."""
    rows = []
    for (system, executor), results in runs.items():
        row: dict[str, Any] = {
            "system": system,
            "executor": results[0]["executor"],
            "rows": results[0]["rows"],
            "rows_per_s": statistics.median(r["rows_per_s"] for r in results),
            "runs": [round(r["rows_per_s"]) for r in results],
            "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in results),
            "worker_peak_rss_mb": statistics.median(r["worker_peak_rss_mb"] for r in results),
        }
        baseline = runs.get(("no-journal", executor))
        if system == "journal" and baseline:
            pairs = zip(results, baseline, strict=True)
            costs = [1 - j["rows_per_s"] / n["rows_per_s"] for j, n in pairs]
            row["journal_cost"] = statistics.median(costs)
            row["journal_costs"] = [round(c, 3) for c in costs]
        rows.append(row)
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        f"{'system':<11} {'executor':<8} {'rows':>9} {'rows/s':>9} {'runs':<24} "
        f"{'RSS MB':>7} {'workers':>7} {'journal cost':>12}"
    ]
    for row in rows:
        cost = f"{row['journal_cost']:+.1%}" if "journal_cost" in row else "-"
        workers = f"{row['worker_peak_rss_mb']:.0f}" if row["worker_peak_rss_mb"] else "-"
        lines.append(
            f"{row['system']:<11} {row['executor']:<8} {row['rows']:>9,} "
            f"{row['rows_per_s']:>9,.0f} {','.join(map(str, row['runs'])):<24} "
            f"{row['peak_rss_mb']:>7.0f} {workers:>7} {cost:>12}"
        )
    lines.append(
        f"targets: >= {TARGET_ROWS_PER_S:,} rows/s; peak RSS <= {TARGET_PEAK_RSS_MB} MB; "
        f"journal cost <= {TARGET_JOURNAL_COST:.0%}"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--executors", default="thread,process")
    parser.add_argument("--quick", action="store_true", help="100,000 rows, 1 repeat")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--one", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, str(HERE))
    if args.one:
        system, executor, rows_path, cache_dir = args.one
        print(json.dumps(measure(system, executor, Path(rows_path), Path(cache_dir))))
        return
    rows, repeats = (100_000, 1) if args.quick else (args.rows, args.repeats)
    plan = [("by-hand", "-")]
    for executor in args.executors.split(","):
        plan += [("no-journal", executor), ("journal", executor)]
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {case: [] for case in plan}
    with tempfile.TemporaryDirectory(prefix="asyncml-job-bench-") as folder:
        cache = Path(folder)
        rows_path = cache / "rows.jsonl"
        write_rows(rows_path, rows, cache)
        print(f"{rows:,} rows, {rows_path.stat().st_size / 2**20:.0f} MiB", file=sys.stderr)
        for repeat in range(repeats):
            for system, executor in plan:
                result = run_child(system, executor, rows_path, cache)
                runs[(system, executor)].append(result)
                print(
                    f"[{repeat + 1}/{repeats}] {system} {executor}: "
                    f"{result['rows_per_s']:,.0f} rows/s, {result['peak_rss_mb']:.0f} MB",
                    file=sys.stderr,
                )
    table = summarise(runs)
    print(format_table(table))
    if args.json:
        args.json.write_text(json.dumps(table, indent=2))


if __name__ == "__main__":
    main()
