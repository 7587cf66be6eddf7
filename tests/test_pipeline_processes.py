"""Pipelines with process stages: real worker processes, real signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from asyncml.pipeline import Pipeline, stage
from tests import process_models

SCRIPTS = Path(__file__).parent / "scripts"


@pytest.mark.timeout(180)  # spawning worker processes is slow on a busy machine
def test_ctrl_c_stops_a_pipeline_and_leaves_no_process_or_thread() -> None:
    process = subprocess.Popen(
        [sys.executable, str(SCRIPTS / "pipeline_interrupted.py")],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")},
    )
    workers: list[int] = []
    try:
        assert process.stdout is not None
        for line in process.stdout:
            if line.startswith("worker "):
                workers.append(int(line.split()[1]))
            if line.startswith("running"):
                break
        assert len(workers) == 2
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=120)
    finally:  # a failed test must not leave the pipeline running (its workers follow it)
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 130, output
    assert output.strip().splitlines()[-1] == "interrupted alive=[]"
    for pid in workers:  # joined by the pipeline before the script exited
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


async def test_a_process_stage_gives_every_item_one_outcome() -> None:
    pipeline = Pipeline(
        stage(process_models.exit_on_13, batched=True, executor="process", workers=2, batch_size=8)
    )
    async with pipeline.stream(range(40), with_index=True) as outputs:
        got = dict([pair async for pair in outputs])
    assert sorted(got) == [i for i in range(40) if i != 13]
    summary = outputs.summary()
    assert summary.failed == 1
    assert summary.dead_letters[0].error_type == "WorkerCrashed"


async def test_a_process_stage_with_a_timeout_ends_despite_a_hung_item() -> None:
    pipeline = Pipeline(
        stage(process_models.hang_on_3, executor="process", timeout=0.3, batch_size=1)
    )
    async with pipeline.stream(range(6), ordered=False) as outputs:
        got = [o async for o in outputs]
    # Items queued behind the hung one may pass their deadlines too; every item has one
    # outcome, and the run ends.
    assert {0, 1, 2} <= set(got) <= {0, 1, 2, 4, 5}
    assert outputs.summary().failed == 6 - len(got)
