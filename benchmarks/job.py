"""Benchmark of batch jobs: a million JSONL rows through W2's model, end to end.

::

    python benchmarks/job.py [--rows N] [--repeats N] [--executors thread,process] [--quick]
                             [--no-resume] [--json PATH]

Each run reads the rows (``{"pixels": [64 values]}``, drawn from the bundled digits with
seed 0), runs W2's classifier on each row's pixels, and writes ``{"id", "prediction"}``
lines, through :func:`asyncml.job.run_job` as ``asyncml run --field pixels`` does (with
``--executor process``, one worker per core by default, which parse the lines themselves).
Systems:

- ``journal``: the job as shipped: committed parts, a SQLite journal, fsyncs;
- ``no-journal``: the same job with ``use_journal=False`` (the same parts and final
  assembly, without journal or fsync): the difference is what exactly-once costs;
- ``by-hand``: the same work in one plain loop, no asyncml, no threads: read 1 MiB blocks,
  ``orjson.loads`` each line, predict 256 rows at a time, ``orjson.dumps`` each result;
- ``resume``: the ``journal`` job SIGKILLed once its journal shows 90% of the rows
  committed, then resumed to completion; its time is compared with the full ``journal``
  run of the same repeat.

Jobs commit every 10% of the rows (every 100,000 rows, the default, at a million).

Every system runs with the garbage-collector threshold ``asyncml run`` sets
(:func:`asyncml.job.fewer_collections`).

Every run is a fresh child process (its peak RSS is its own); repeats are interleaved and
each row reports medians. rows/s counts from the model being ready to the output being in
place, so the model's setup is left out.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sqlite3
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
TARGET_RESUME_SHARE = 0.15
#: The resumed job is killed once at least this share of the rows is committed.
KILL_AT = 0.9


def write_rows(path: Path, rows: int, cache_dir: Path) -> None:
    """``rows`` lines of ``{"pixels": [...]}``, picked from the digits with seed 0."""
    from workloads import _trained_digits

    pixels = np.rint(_trained_digits(cache_dir)[1] * 16).astype(int).tolist()
    lines = [orjson.dumps({"pixels": row}) + b"\n" for row in pixels]
    picks = np.random.default_rng(SEED).integers(0, len(lines), size=rows)
    with path.open("wb") as file:
        for start in range(0, rows, 65_536):
            file.write(b"".join([lines[i] for i in picks[start : start + 65_536]]))


def measure(
    system: str,
    executor: str,
    rows_path: Path,
    cache_dir: Path,
    commit_rows: int,
    launched: float,
) -> dict[str, Any]:
    """One run, in this process, which the parent started at ``launched`` (its monotonic
    clock, which on Linux is this process's too). ``killed`` and ``resume`` share one
    output, so that ``resume`` continues the job ``killed`` left."""
    import resource

    resumed_rows, setup = 0, 0.0
    if system in ("killed", "resume"):
        output = rows_path.with_name("killed.jsonl")
    else:
        output = rows_path.with_name(f"out-{os.getpid()}.jsonl")
    if system == "by-hand":
        from asyncml.job import fewer_collections

        with fewer_collections():  # the same garbage-collector setting as the jobs
            elapsed = by_hand(rows_path, output, cache_dir)
        wall = elapsed
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
                    use_journal=system != "no-journal",
                    resume=system == "resume",
                    force=system != "resume",
                    commit_rows=commit_rows,
                )
            )
        elapsed, wall, setup = summary.wall_s - summary.setup_s, summary.wall_s, summary.setup_s
        resumed_rows = summary.resumed
    process = time.monotonic() - launched  # the output is in place: what a user waits for
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # before the check
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    written = check_output(output, rows_path, cache_dir)
    output.unlink()
    return {
        "system": system,
        "executor": executor if system != "by-hand" else "-",
        "rows": written,
        "elapsed_s": elapsed,
        "rows_per_s": (written - resumed_rows) / elapsed,
        "wall_s": wall,
        "setup_s": setup,
        "process_s": process,
        "resumed_rows": resumed_rows,
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


def child_command(
    system: str, executor: str, rows_path: Path, cache_dir: Path, commit_rows: int
) -> list[str]:
    """The child's command line; it carries the moment of its launch, so that the child
    can tell how long a user would have waited for its output."""
    paths = [str(rows_path), str(cache_dir)]
    launched = str(time.monotonic())
    return [sys.executable, __file__, "--one", system, executor, *paths, str(commit_rows), launched]


def run_child(
    system: str, executor: str, rows_path: Path, cache_dir: Path, commit_rows: int
) -> dict[str, Any]:
    command = child_command(system, executor, rows_path, cache_dir, commit_rows)
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"{system}/{executor} failed: {done.stderr.strip()[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def kill_then_resume(
    executor: str, rows_path: Path, cache_dir: Path, commit_rows: int, rows: int
) -> dict[str, Any]:
    """The journal job, SIGKILLed once ``KILL_AT`` of its rows are committed, then resumed."""
    journal = rows_path.with_name("killed.jsonl.journal.sqlite")
    command = child_command("killed", executor, rows_path, cache_dir, commit_rows)
    with subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) as job:
        try:
            deadline = time.monotonic() + 1800
            while committed_rows(journal) < KILL_AT * rows:
                if job.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"killed/{executor} ended or stalled before the kill")
                time.sleep(0.01)
        finally:
            job.kill()
            _, stderr = job.communicate(timeout=60)
    if job.returncode != -signal.SIGKILL:
        raise RuntimeError(f"killed/{executor} exited {job.returncode}: {stderr[-2000:]!r}")
    result = run_child("resume", executor, rows_path, cache_dir, commit_rows)
    result["killed_at"] = result["resumed_rows"] / rows
    return result


def committed_rows(journal: Path) -> int:
    """Rows the journal lists as committed, read without writing to it (0 before it has
    any commit)."""
    if not journal.exists():
        return 0
    try:
        with contextlib.closing(sqlite3.connect(f"{journal.as_uri()}?mode=ro", uri=True)) as db:
            rows = db.execute("SELECT max(next_row) FROM commits").fetchone()[0]
    except sqlite3.OperationalError:  # created, but without its tables yet
        return 0
    return int(rows or 0)


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
        full = runs.get(("journal", executor))
        if system == "resume" and full:
            row["killed_at"] = statistics.median(r["killed_at"] for r in results)
            row["resume_s"] = statistics.median(r["wall_s"] for r in results)
            row["resume_setup_s"] = statistics.median(r["setup_s"] for r in results)
            row["full_s"] = statistics.median(r["wall_s"] for r in full)
            same_repeat = list(zip(results, full, strict=True))
            shares = [r["wall_s"] / f["wall_s"] for r, f in same_repeat]
            process_shares = [r["process_s"] / f["process_s"] for r, f in same_repeat]
            working = [
                (r["wall_s"] - r["setup_s"]) / (f["wall_s"] - f["setup_s"]) for r, f in same_repeat
            ]
            row["resume_share"] = statistics.median(shares)
            row["resume_shares"] = [round(s, 3) for s in shares]
            row["resume_share_after_setup"] = statistics.median(working)
            row["resume_process_s"] = statistics.median(r["process_s"] for r in results)
            row["full_process_s"] = statistics.median(r["process_s"] for r in full)
            row["resume_process_share"] = statistics.median(process_shares)
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
        if row["system"] == "resume":
            continue
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
    resumes = [row for row in rows if row["system"] == "resume" and "resume_share" in row]
    if resumes:
        lines += [
            "",
            f"resume after a SIGKILL at >= {KILL_AT:.0%} committed "
            "(job: run_job, setup included; process: launch to output in place)",
            f"{'executor':<8} {'killed at':>9} {'resume s':>8} {'setup s':>7} {'full s':>7} "
            f"{'share':>6} {'runs':<20} {'w/o setup':>9} {'process s':>9} {'full':>6} {'share':>6}",
        ]
        for row in resumes:
            runs = ",".join(f"{s:.1%}" for s in row["resume_shares"])
            lines.append(
                f"{row['executor']:<8} {row['killed_at']:>9.1%} {row['resume_s']:>8.2f} "
                f"{row['resume_setup_s']:>7.2f} {row['full_s']:>7.2f} {row['resume_share']:>6.1%} "
                f"{runs:<20} {row['resume_share_after_setup']:>9.1%} "
                f"{row['resume_process_s']:>9.2f} {row['full_process_s']:>6.2f} "
                f"{row['resume_process_share']:>6.1%}"
            )
        lines.append(f"target: resume <= {TARGET_RESUME_SHARE:.0%} of a full run's time")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--executors", default="thread,process")
    parser.add_argument("--quick", action="store_true", help="100,000 rows, 1 repeat")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--no-resume", action="store_true", help="skip the kill and resume")
    parser.add_argument("--one", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, str(HERE))
    if args.one:
        system, executor, rows_path, cache_dir, commit_rows, launched = args.one
        result = measure(
            system, executor, Path(rows_path), Path(cache_dir), int(commit_rows), float(launched)
        )
        print(json.dumps(result))
        return
    from asyncml.job._run import DEFAULT_COMMIT_ROWS

    rows, repeats = (100_000, 1) if args.quick else (args.rows, args.repeats)
    commit_rows = max(1, min(DEFAULT_COMMIT_ROWS, rows // 10))
    plan = [("by-hand", "-")]
    for executor in args.executors.split(","):
        plan += [("no-journal", executor), ("journal", executor)]
        if not args.no_resume:
            plan.append(("resume", executor))
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {case: [] for case in plan}
    with tempfile.TemporaryDirectory(prefix="asyncml-job-bench-") as folder:
        cache = Path(folder)
        rows_path = cache / "rows.jsonl"
        write_rows(rows_path, rows, cache)
        print(f"{rows:,} rows, {rows_path.stat().st_size / 2**20:.0f} MiB", file=sys.stderr)
        for repeat in range(repeats):
            for system, executor in plan:
                if system == "resume":
                    result = kill_then_resume(executor, rows_path, cache, commit_rows, rows)
                else:
                    result = run_child(system, executor, rows_path, cache, commit_rows)
                runs[(system, executor)].append(result)
                print(
                    f"[{repeat + 1}/{repeats}] {system} {executor}: "
                    f"{result['rows_per_s']:,.0f} rows/s, {result['wall_s']:.2f} s, "
                    f"{result['peak_rss_mb']:.0f} MB",
                    file=sys.stderr,
                )
    table = summarise(runs)
    print(format_table(table))
    if args.json:
        args.json.write_text(json.dumps(table, indent=2))


if __name__ == "__main__":
    main()
