"""``asyncml run --executor ray --ray-address ADDR``: a job on a running Ray cluster (the
session's local Ray), killed mid-run and resumed, every row written exactly once."""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from asyncml.cli import main
from tests.ray_session import ray_local, ray_session  # noqa: F401  # fixtures

pytestmark = pytest.mark.usefixtures("ray_local")

SLOW_DOUBLE = """
import os
import time


def double(batch):
    time.sleep(0.1)  # slow enough to be killed mid-run
    return [{"twice": 2 * v, "pid": os.getpid()} for v in batch]
"""
ROWS = 600


def ray_address() -> str:
    import ray

    address: str = ray.get_runtime_context().gcs_address
    return address


def job_args(tmp_path: Path, *extra: str) -> list[str]:
    models = list(tmp_path.glob("ray_job_model_*.py"))  # a new name per test: REFs import by name
    model = models[0] if models else tmp_path / f"ray_job_model_{uuid.uuid4().hex[:10]}.py"
    model.write_text(SLOW_DOUBLE)
    rows = tmp_path / "rows.jsonl"
    if not rows.exists():
        rows.write_bytes(b"".join(orjson.dumps(i) + b"\n" for i in range(ROWS)))
    return [
        "run", f"{model}:double", "--input", str(rows), "--output", str(tmp_path / "out.jsonl"),
        "--executor", "ray", "--ray-address", ray_address(), "--workers", "2",
        "--batch-size", "8", "--chunk-size", "200", "--commit-every", "1", "--no-progress", *extra,
    ]  # fmt: skip


def committed_rows(journal: Path) -> int:
    if not journal.exists():
        return 0
    try:
        with contextlib.closing(sqlite3.connect(journal, timeout=1)) as db:
            found = db.execute("SELECT max(next_row) FROM commits").fetchone()
    except sqlite3.Error:  # not created yet
        return 0
    return int(found[0] or 0)


def test_a_killed_job_on_a_ray_cluster_resumes_with_every_row_once(tmp_path: Path) -> None:
    command = [sys.executable, "-c", "from asyncml.cli import main; main()"]
    command += job_args(tmp_path)
    environ = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    with subprocess.Popen(command, env=environ, stderr=subprocess.PIPE, text=True) as job:
        journal = tmp_path / "out.jsonl.journal.sqlite"
        while committed_rows(journal) == 0:  # a plain test: no event loop to block
            assert job.poll() is None, job.stderr.read() if job.stderr else ""
            time.sleep(0.05)
        job.kill()  # its actors die with it: Ray ends a driver's actors when it exits
    assert committed_rows(journal) < ROWS

    resumed = CliRunner().invoke(main, job_args(tmp_path, "--resume"))
    assert resumed.exit_code == 0, resumed.output
    assert re.search(r"0 failed, [1-9]\d* resumed", resumed.output), resumed.output
    lines = [orjson.loads(line) for line in (tmp_path / "out.jsonl").read_bytes().splitlines()]
    assert [row["id"] for row in lines] == list(range(ROWS))
    assert [row["twice"] for row in lines] == [2 * i for i in range(ROWS)]
    assert os.getpid() not in {row["pid"] for row in lines}  # ran in actors


def test_ray_address_needs_the_ray_executor(tmp_path: Path) -> None:
    args = job_args(tmp_path)
    args[args.index("--executor") + 1] = "thread"
    ran = CliRunner().invoke(main, args)
    served = CliRunner().invoke(main, ["serve", args[1], "--ray-address", ray_address()])
    for result in (ran, served):
        assert result.exit_code == 2
        assert "--ray-address needs --executor ray" in result.output
