"""HTTP serving benchmarks: asyncml's server against LitServe and Ray Serve on 127.0.0.1.

::

    python benchmarks/http_bench.py [--workloads W2,W3] [--systems asyncml,litserve,ray-serve]
                                    [--repeats 3] [--seconds 6] [--overload] [--json PATH]

Each system serves the workload's model in its own process (``http_servers.py``); the load
comes from another process (``http_load.py``, a lean keep-alive client on uvloop). Per
system and repeat: closed loops at 64 and 256 connections; the better of the two is the
system's capacity; then open-loop Poisson arrivals at 50%, 80% and 95% of that capacity. Repeats are
interleaved across systems and each row is the median over repeats. Peers whose packages
are missing are skipped. ``--overload`` adds, for asyncml, Poisson arrivals at 10x its
capacity, then a closed loop at 64 connections right after (does service recover at once?),
with the server's peak RSS. See ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from http_servers import ENDPOINTS
from workloads import build_model

HERE = Path(__file__).resolve().parent
#: Packages each system needs; systems whose packages are missing are skipped.
NEEDS = {
    "asyncml": (),
    "asyncml-inprocess": (),
    "litserve": ("litserve",),
    "ray-serve": ("ray",),
}
#: Not a peer: asyncml's model called in-process, the reference for what HTTP costs.
INPROCESS = "asyncml-inprocess"
CLOSED_CONNECTIONS = (64, 256)
POISSON_LOADS = (0.5, 0.8, 0.95)
OVERLOAD = 10.0
READY_TIMEOUT_S = 240.0
RUN_TIMEOUT_S = 300.0


@dataclass
class Run:
    """One load run against one server."""

    workload: str
    system: str
    mode: str  # "closed 64", "poisson 80%", "overload 10x", "after overload"
    repeat: int
    offered_per_s: float | None
    items_per_s: float
    p50_ms: float | None
    p99_ms: float | None
    statuses: dict[str, int]
    wrong: int
    server_peak_rss_mb: float | None = None


@dataclass
class Row:
    """Medians over the repeats of one (workload, system, mode)."""

    workload: str
    system: str
    mode: str
    items_per_s: float
    p50_ms: float | None
    p99_ms: float | None
    refused: int
    failed: int
    wrong: int
    runs: list[float] = field(default_factory=list)
    server_peak_rss_mb: float | None = None
    #: asyncml rows: median over repeats of items/s over the best peer's in that repeat
    x_best_peer: float | None = None
    #: asyncml rows: median over repeats of p99 over the lowest peer p99 in that repeat
    p99_x_best_peer: float | None = None
    #: asyncml closed-loop rows: median over repeats of items/s over in-process asyncml's
    x_inprocess: float | None = None


def available(systems: Sequence[str]) -> list[str]:
    """The systems whose packages are installed (asyncml always is)."""
    found = []
    for system in systems:
        missing = [m for m in NEEDS[system] if importlib.util.find_spec(m) is None]
        if missing:
            _progress(f"skipping {system}: {', '.join(missing)} not installed")
        else:
            found.append(system)
    return found


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class ServerProcess:
    """A system's server in its own process group (Ray starts helpers of its own)."""

    def __init__(self, system: str, workload: str, cache: Path, log: Path):
        self.system = system
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.endpoint = self.url + ENDPOINTS[system][0]
        script = str(HERE / "http_servers.py")
        self._log = log.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, script, system, workload, str(self.port), str(cache)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, probe: bytes) -> None:
        """Waits until the server answers a real request (bounded; it is a benchmark)."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.system} exited with {self.process.returncode}")
            request = urllib.request.Request(
                self.endpoint, probe, {"Content-Type": "application/json"}
            )
            try:
                with urllib.request.urlopen(request, timeout=5) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.25)
        raise RuntimeError(f"{self.system} was not ready within {READY_TIMEOUT_S} s")

    def peak_rss_mb(self) -> float | None:
        import psutil

        try:
            root = psutil.Process(self.process.pid)
            tree = [root, *root.children(recursive=True)]
        except psutil.Error:
            return None
        total = 0
        for process in tree:
            try:
                status = Path(f"/proc/{process.pid}/status").read_text()
                total += next(
                    int(line.split()[1]) * 1024
                    for line in status.splitlines()
                    if line.startswith("VmHWM:")
                )
            except (OSError, StopIteration):
                continue
        return total / 2**20

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=60)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)  # helpers left behind, if any
        self.process.wait()
        self._log.close()


def load(
    url: str, workload: str, cache: Path, mode: str, level: float, seconds: float
) -> dict[str, Any]:
    script = str(HERE / "http_load.py")
    command = [sys.executable, script, url, workload, str(cache), mode, str(level), str(seconds)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    if done.returncode != 0:
        raise RuntimeError(f"load generator failed: {done.stderr.strip()[-500:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def measure(
    system: str, workload: str, repeat: int, cache: Path, seconds: float, overload: bool
) -> list[Run]:
    """Every load run of one system on one workload, against one server process."""
    from workloads import make_inputs

    if system == INPROCESS:
        return measure_inprocess(workload, repeat, cache, seconds)
    probe = json.dumps({"input": _jsonable(make_inputs(workload, 1, cache)[0])}).encode()
    server = ServerProcess(system, workload, cache, cache / f"{system}-{workload}.log")
    runs: list[Run] = []

    def run(mode: str, kind: str, level: float, offered: float | None) -> Run:
        result = load(server.endpoint, workload, cache, kind, level, seconds)
        measured = Run(
            workload,
            system,
            mode,
            repeat,
            offered,
            result["items_per_s"],
            result["p50_ms"],
            result["p99_ms"],
            result["statuses"],
            result["wrong"],
        )
        runs.append(measured)
        p50, p99 = (
            f"{v:.1f}" if v is not None else "-" for v in (measured.p50_ms, measured.p99_ms)
        )
        _progress(
            f"  {workload} {system:9} {mode:14} {measured.items_per_s:8,.0f}/s "
            f"p50 {p50} ms p99 {p99} ms {measured.statuses}"
        )
        return measured

    try:
        server.wait_ready(probe)
        capacity = max(
            run(f"closed {n}", "closed", n, None).items_per_s for n in CLOSED_CONNECTIONS
        )
        for share in POISSON_LOADS:
            rate = share * capacity
            run(f"poisson {share:.0%}", "poisson", rate, rate)
        if overload and system == "asyncml":
            run(f"overload {OVERLOAD:.0f}x", "poisson", OVERLOAD * capacity, OVERLOAD * capacity)
            after = run("after overload", "closed", 64, None)
            after.server_peak_rss_mb = server.peak_rss_mb()
        peak = server.peak_rss_mb()
        for measured in runs:
            measured.server_peak_rss_mb = measured.server_peak_rss_mb or peak
    finally:
        server.stop()
    return runs


def measure_inprocess(workload: str, repeat: int, cache: Path, seconds: float) -> list[Run]:
    """asyncml's model driven in one process by closed-loop callers, without HTTP."""
    runs = []
    for callers in CLOSED_CONNECTIONS:
        result = load("-", workload, cache, "inprocess", callers, seconds)
        runs.append(
            Run(
                workload,
                INPROCESS,
                f"closed {callers}",
                repeat,
                None,
                result["items_per_s"],
                result["p50_ms"],
                result["p99_ms"],
                result["statuses"],
                result["wrong"],
            )
        )
        _progress(
            f"  {workload} {INPROCESS} closed {callers:<7} {result['items_per_s']:8,.0f}/s "
            f"p50 {result['p50_ms']:.1f} ms p99 {result['p99_ms']:.1f} ms"
        )
    return runs


def _jsonable(item: Any) -> Any:
    return item.tolist() if hasattr(item, "tolist") else item


def summarise(runs: list[Run]) -> list[Row]:
    groups: dict[tuple[str, str, str], list[Run]] = {}
    for run in runs:
        groups.setdefault((run.workload, run.system, run.mode), []).append(run)
    by_repeat = {(r.workload, r.system, r.mode, r.repeat): r for r in runs}
    rows = []
    for (workload, system, mode), group in groups.items():
        row = Row(
            workload,
            system,
            mode,
            statistics.median(r.items_per_s for r in group),
            _median([r.p50_ms for r in group]),
            _median([r.p99_ms for r in group]),
            sum(r.statuses.get("503", 0) for r in group),
            sum(n for r in group for s, n in r.statuses.items() if s not in ("200", "503")),
            sum(r.wrong for r in group),
            [round(r.items_per_s) for r in group],
            _median([r.server_peak_rss_mb for r in group]),
        )
        if system == "asyncml":
            to_peer, p99_to_peer, to_inprocess = [], [], []
            for run in group:
                peers = [
                    r
                    for (w, s, m, repeat), r in by_repeat.items()
                    if (w, m, repeat) == (workload, mode, run.repeat) and _is_peer(s)
                ]
                if peers:
                    to_peer.append(run.items_per_s / max(p.items_per_s for p in peers))
                    p99s = [p.p99_ms for p in peers if p.p99_ms]
                    if run.p99_ms and p99s:
                        p99_to_peer.append(run.p99_ms / min(p99s))
                inprocess = by_repeat.get((workload, INPROCESS, mode, run.repeat))
                if inprocess is not None and inprocess.items_per_s:
                    to_inprocess.append(run.items_per_s / inprocess.items_per_s)
            row.x_best_peer = _median(to_peer)
            row.p99_x_best_peer = _median(p99_to_peer)
            row.x_inprocess = _median(to_inprocess)
        rows.append(row)
    return rows


def _is_peer(system: str) -> bool:
    return system not in ("asyncml", INPROCESS)


def _median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def format_table(rows: list[Row]) -> str:
    lines = [
        "| workload | system | load | items/s | per repeat | p50 ms | p99 ms | p99/p50 | "
        "x best peer | p99 x best peer | x in-process | refused (503) | server RSS MB |",
        "|---|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def number(value: float | None, digits: int = 1) -> str:
        return "-" if value is None else f"{value:,.{digits}f}"

    for row in rows:
        spread = row.p99_ms / row.p50_ms if row.p99_ms and row.p50_ms else None
        per_repeat = " / ".join(f"{n:,}" for n in row.runs)
        lines.append(
            f"| {row.workload} | {row.system} | {row.mode} | {row.items_per_s:,.0f} | "
            f"{per_repeat} | {number(row.p50_ms)} | {number(row.p99_ms)} | {number(spread)} | "
            f"{number(row.x_best_peer, 2)} | {number(row.p99_x_best_peer, 2)} | "
            f"{number(row.x_inprocess, 2)} | {row.refused:,} | "
            f"{number(row.server_peak_rss_mb, 0)} |"
        )
    return "\n".join(lines)


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--workloads", default="W2,W3")
    parser.add_argument("--systems", default=",".join(NEEDS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=6.0, help="length of each load run")
    parser.add_argument("--overload", action="store_true", help="add asyncml's overload runs")
    parser.add_argument("--json", type=Path, help="write every run and the rows here")
    args = parser.parse_args(argv)
    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    systems = available([s.strip() for s in args.systems.split(",") if s.strip()])
    runs: list[Run] = []
    errors: list[str] = []
    with tempfile.TemporaryDirectory(prefix="asyncml-http-bench-") as folder:
        cache = Path(folder)
        for workload in workloads:
            build_model(workload, cache)  # trains W2's model once, before anything is timed
        for repeat in range(args.repeats):
            for workload in workloads:
                for system in systems:
                    _progress(f"[repeat {repeat + 1}/{args.repeats}] {workload} {system}")
                    try:
                        runs += measure(
                            system, workload, repeat, cache, args.seconds, args.overload
                        )
                    except (RuntimeError, subprocess.TimeoutExpired) as error:
                        errors.append(f"{workload} {system}: {error}")
                        _progress(f"  FAILED: {error}")
    rows = summarise(runs)
    print(format_table(rows), flush=True)
    for failure in errors:
        print(f"failed: {failure}", flush=True)
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {"runs": [asdict(r) for r in runs], "rows": [asdict(r) for r in rows]}, indent=2
            )
            + "\n"
        )
    return 1 if errors or any(row.wrong for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
