"""Exactly once across crashes: ``asyncml run`` is SIGKILLed at each point of the commit
protocol (and by the test itself while the model is busy, or at random moments), then
resumed; the output must hold every row once, and no committed row may be computed again.

The kill is real (``kill -9``). Where it happens is deterministic in most tests: the job
kills itself at a named point of a given commit (``ASYNCML_JOB_CRASH_AT``), or the model
tells the test through a FIFO that it has computed N rows, and blocks until the test kills
it. One test kills one job ten times at points drawn from a seeded generator, which land
wherever the job happens to be. Each run logs the rows its model computed to its own file.
"""

from __future__ import annotations

import contextlib
import functools
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

ROOT = Path(__file__).parents[1]
MODELS = ROOT / "tests" / "scripts" / "job_models.py"
ROWS = 300
#: Commit every chunk (about 36 rows).
EVERY_CHUNK = ("--chunk-size", "400", "--commit-every", "1", "--batch-size", "8")


class Job:
    """The same ``asyncml run`` command, run several times over one folder."""

    def __init__(
        self,
        folder: Path,
        rows: int = ROWS,
        models: Path = MODELS,
        options: tuple[str, ...] = EVERY_CHUNK,
    ):
        self.folder = folder
        self.rows = rows
        self.models = models
        self.options = options
        self.runs = 0
        #: Rows committed when each run started.
        self.committed_before: list[int] = []
        folder.mkdir(exist_ok=True)
        (folder / "in.jsonl").write_bytes(b"".join(b'{"v": %d}\n' % i for i in range(rows)))

    def command(self, model: str, *args: str) -> list[str]:
        """``asyncml run`` of ``model`` in ``models``, with this job's options."""
        return [
            sys.executable, "-c", "from asyncml.cli import main; main()", "run",
            f"{self.models}:{model}", "-i", str(self.folder / "in.jsonl"),
            "-o", str(self.folder / "out.jsonl"), *self.options, *args,
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
        """How many commits the journal lists, and how many rows they cover.

        Read-only, so that reading neither disturbs a running job nor checkpoints the WAL
        a killed one left behind; a journal not yet created (or without its tables yet)
        lists nothing.
        """
        path = self.folder / "out.jsonl.journal.sqlite"
        if not path.exists():
            return 0, 0
        try:
            with contextlib.closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)) as db:
                query = "SELECT count(*), max(next_row) FROM commits"
                commits, rows = db.execute(query).fetchone()
        except sqlite3.OperationalError:
            return 0, 0
        return int(commits), int(rows or 0)

    def has_committed(self, rows: int) -> bool:
        """Whether the journal's commits cover at least ``rows`` rows."""
        return self.journal()[1] >= rows

    def computed(self, run: int) -> list[int]:
        log = self.folder / f"calls-{run}.log"
        return [int(line) for line in log.read_text().split()] if log.exists() else []

    def assert_every_row_once(self) -> None:
        lines = (self.folder / "out.jsonl").read_bytes().splitlines()
        assert [orjson.loads(line) for line in lines] == [
            {"id": i, "prediction": 2 * i} for i in range(self.rows)
        ]
        every: set[int] = set()
        for run in range(1, self.runs + 1):
            rows = self.computed(run)
            assert len(rows) == len(set(rows)), "a run computed a row twice"
            again = [row for row in rows if row < self.committed_before[run - 1]]
            assert again == [], f"run {run} computed committed rows again"
            every |= set(rows)
        assert every == set(range(self.rows))
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


PACED_MODEL = """
import os
import time


def paced(batch):
    \"\"\"Doubles each row's v, logging which rows it computed; 5 ms a batch.\"\"\"
    time.sleep(0.005)
    values = [int(row["v"]) for row in batch]
    with open(os.environ["ASYNCML_TEST_CALLS"], "a") as log:
        log.write("".join(f"{v}\\n" for v in values))
    return [2 * v for v in values]
"""
PACED_ROWS = 100_000
#: Batches of 100 rows (so at most 20,000 rows/s), a commit every 1,000 rows or so, chunks
#: of about 300 rows.
PACED_OPTIONS = ("--batch-size", "100", "--commit-every", "1000", "--chunk-size", "4096")
KILL_SEED = 20_240_917


def wait_until(reached: Callable[[], bool], run: subprocess.Popen[str], what: str) -> None:
    """Polls ``reached`` until it holds; fails if ``run`` ends first or 30 s pass."""
    deadline = time.monotonic() + 30
    while not reached():
        if run.poll() is not None:
            pytest.fail(f"the job ended (exit {run.returncode}) before {what}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} within 30 s")
        time.sleep(0.005)


@pytest.mark.timeout(120)
def test_sigkill_at_ten_random_moments_then_resume(tmp_path: Path) -> None:
    """Ten kills of one job, each resumed: five a random delay (up to 0.5 s) after the
    model starts computing, five once the journal has committed a random number of further
    rows (1% to 4% of the input). The model's pace bounds how far a run gets (at most
    20,000 rows/s), so that all ten kills come before the job could finish."""
    models = tmp_path / "models"
    models.mkdir()
    (models / "paced_model.py").write_text(PACED_MODEL)
    job = Job(tmp_path / "job", PACED_ROWS, models / "paced_model.py", PACED_OPTIONS)
    draw = random.Random(KILL_SEED)
    kinds = ["time", "rows"] * 5
    draw.shuffle(kinds)
    for number, kind in enumerate(kinds):
        committed = job.journal()[1]
        resume = ("--resume",) if number else ()
        environ = job.environ()
        calls = job.folder / f"calls-{job.runs}.log"
        with subprocess.Popen(
            job.command("paced", *resume), env=environ, stderr=subprocess.PIPE, text=True
        ) as run:
            try:
                if kind == "time":
                    wait_until(calls.exists, run, "the model computed a row")
                    time.sleep(draw.uniform(0, 0.5))
                else:
                    target = committed + draw.randint(PACED_ROWS // 100, PACED_ROWS // 25)
                    reached = functools.partial(job.has_committed, target)
                    wait_until(reached, run, f"{target:,} rows committed")
            finally:
                run.kill()  # also when waiting failed, so that no job outlives the test
                _, stderr = run.communicate(timeout=30)
        assert run.returncode == -signal.SIGKILL, f"kill {number + 1} ({kind}): {stderr}"
    committed = job.journal()[1]
    assert 0 < committed < PACED_ROWS
    resumed = job.run("--resume", model="paced")
    assert resumed.returncode == 0, resumed.stderr
    assert f"{committed:,} resumed" in resumed.stderr
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
    assert (dead["row"], dead["id"], dead["stage"], dead["error"]) == (
        7,
        7,
        "model",
        "WorkerCrashed",
    )


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
