"""Exactly once across crashes: ``asyncml run`` is SIGKILLed at each point of the commit
protocol (and by the test itself while the model is busy), then resumed; the output must
hold every row once, and no committed row may be computed again.

The kill is real (``kill -9``). Where it happens is deterministic: the job kills itself
at a named point of a given commit (``ASYNCML_JOB_CRASH_AT``), or the model tells the test
through a FIFO that it has computed N rows, and blocks until the test kills it. Each run
logs the rows its model computed to its own file.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

ROOT = Path(__file__).parents[1]
MODELS = ROOT / "tests" / "scripts" / "job_models.py"
ROWS = 300


class Job:
    """The same ``asyncml run`` command, run several times over one folder."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.runs = 0
        #: Rows committed when each run started.
        self.committed_before: list[int] = []
        (folder / "in.jsonl").write_bytes(b"".join(b'{"v": %d}\n' % i for i in range(ROWS)))

    def command(self, model: str, *args: str) -> list[str]:
        """``asyncml run``, committing every chunk (about 36 rows)."""
        return [
            sys.executable, "-c", "from asyncml.cli import main; main()", "run",
            f"{MODELS}:{model}", "-i", str(self.folder / "in.jsonl"),
            "-o", str(self.folder / "out.jsonl"),
            "--chunk-size", "400", "--commit-every", "1", "--batch-size", "8", *args,
        ]  # fmt: skip

    def environ(self, **extra: str) -> dict[str, str]:
        self.committed_before.append(self.journal()[1])
        self.runs += 1
        calls = str(self.folder / f"calls-{self.runs}.log")
        return {**os.environ, "ASYNCML_TEST_CALLS": calls, **extra}

    def run(
        self, *args: str, model: str = "counted", **env: str
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.command(model, *args),
            capture_output=True,
            text=True,
            env=self.environ(**env),
            timeout=60,
        )

    def journal(self) -> tuple[int, int]:
        """How many commits the journal lists, and how many rows they cover."""
        path = self.folder / "out.jsonl.journal.sqlite"
        if not path.exists():
            return 0, 0
        with contextlib.closing(sqlite3.connect(path)) as db:
            commits, rows = db.execute("SELECT count(*), max(next_row) FROM commits").fetchone()
        return int(commits), int(rows or 0)

    def computed(self, run: int) -> list[int]:
        log = self.folder / f"calls-{run}.log"
        return [int(line) for line in log.read_text().split()] if log.exists() else []

    def assert_every_row_once(self) -> None:
        lines = (self.folder / "out.jsonl").read_bytes().splitlines()
        assert [orjson.loads(line) for line in lines] == [
            {"id": i, "prediction": 2 * i} for i in range(ROWS)
        ]
        every: set[int] = set()
        for run in range(1, self.runs + 1):
            rows = self.computed(run)
            assert len(rows) == len(set(rows)), "a run computed a row twice"
            again = [row for row in rows if row < self.committed_before[run - 1]]
            assert again == [], f"run {run} computed committed rows again"
            every |= set(rows)
        assert every == set(range(ROWS))
        left = {p.name for p in self.folder.iterdir()} - {"in.jsonl", "out.jsonl"}
        assert all(name.startswith("calls-") for name in left), left


@pytest.mark.parametrize(
    "point",
    ["before-rename:3", "after-rename:3", "after-journal:3", "after-assemble", "after-done"],
)
def test_sigkill_at_each_point_of_the_commit_protocol_then_resume(
    tmp_path: Path, point: str
) -> None:
    job = Job(tmp_path)
    crashed = job.run(ASYNCML_JOB_CRASH_AT=point)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    commits, committed = job.journal()
    on_disk = sorted(p.name for p in (tmp_path / "out.jsonl.parts").iterdir())
    if point == "before-rename:3":
        assert commits == 2
        assert "000003.jsonl.tmp" in on_disk
    elif point == "after-rename:3":
        assert commits == 2  # commit 3's part is in place, but the journal does not list it
        assert "000003.jsonl" in on_disk
    elif point == "after-journal:3":
        assert commits == 3
    else:
        assert committed == ROWS
    resumed = job.run("--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert f"{committed:,} resumed" in resumed.stderr
    job.assert_every_row_once()


def test_sigkill_from_outside_while_the_model_runs_then_resume(tmp_path: Path) -> None:
    job = Job(tmp_path)
    fifo = tmp_path / "signal.fifo"
    os.mkfifo(fifo)
    environ = job.environ(ASYNCML_TEST_HANG_AFTER="170", ASYNCML_TEST_SIGNAL=str(fifo))
    with subprocess.Popen(job.command("hangs_after"), env=environ, stderr=subprocess.PIPE) as run:
        with fifo.open() as reached:  # returns once the model has computed 170 rows
            assert int(reached.read()) >= 170
        run.send_signal(signal.SIGKILL)
        run.wait(timeout=60)
    assert run.returncode == -signal.SIGKILL
    fifo.unlink()
    # Commits trail the model (they wait for outcomes in order), so how many rows were
    # committed when the kill came varies; rows beyond the blocked one never are.
    assert job.journal()[1] <= 176
    resumed = job.run("--resume", model="hangs_after", ASYNCML_TEST_HANG_AFTER=str(10**9))
    assert resumed.returncode == 0, resumed.stderr
    job.assert_every_row_once()


def test_two_crashes_in_a_row_then_resume(tmp_path: Path) -> None:
    job = Job(tmp_path)
    assert job.run(ASYNCML_JOB_CRASH_AT="after-rename:2").returncode == -signal.SIGKILL
    assert job.journal()[0] == 1
    second = job.run("--resume", ASYNCML_JOB_CRASH_AT="after-journal:4")
    assert second.returncode == -signal.SIGKILL
    assert job.journal()[0] == 4
    resumed = job.run("--resume")
    assert resumed.returncode == 0, resumed.stderr
    job.assert_every_row_once()


def test_a_row_that_kills_its_worker_process_fails_alone(tmp_path: Path) -> None:
    (tmp_path / "in.jsonl").write_bytes(b"".join(b'{"v": %d}\n' % i for i in range(12)))
    done = subprocess.run(
        [sys.executable, "-c", "from asyncml.cli import main; main()", "run",
         f"{MODELS}:dies_on_7", "-i", str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "out.jsonl"),
         "--executor", "process", "--batch-size", "4"],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "ASYNCML_TEST_CALLS": str(tmp_path / "calls.log")},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = [orjson.loads(line) for line in (tmp_path / "out.jsonl").read_bytes().splitlines()]
    assert rows == [{"id": i, "prediction": 2 * i} for i in range(12) if i != 7]
    dead = orjson.loads((tmp_path / "out.jsonl.dead.jsonl").read_bytes())
    assert (dead["row"], dead["stage"], dead["error"]) == (7, "model", "WorkerCrashed")


def test_ctrl_c_exits_130_keeping_commits_for_resume(tmp_path: Path) -> None:
    job = Job(tmp_path)
    fifo = tmp_path / "signal.fifo"
    os.mkfifo(fifo)
    environ = job.environ(ASYNCML_TEST_SLOW_AFTER="100", ASYNCML_TEST_SIGNAL=str(fifo))
    with subprocess.Popen(
        job.command("slows_after"), env=environ, stderr=subprocess.PIPE, text=True
    ) as run:
        with fifo.open() as reached:
            assert int(reached.read()) >= 100
        run.send_signal(signal.SIGINT)
        _, stderr = run.communicate(timeout=60)
    assert run.returncode == 130, stderr
    assert "interrupted: committed work is kept; run again with --resume" in stderr
    assert "Traceback" not in stderr
    fifo.unlink()
    assert job.journal()[1] > 0
    resumed = job.run("--resume", model="slows_after", ASYNCML_TEST_SLOW_AFTER=str(10**9))
    assert resumed.returncode == 0, resumed.stderr
    job.assert_every_row_once()
