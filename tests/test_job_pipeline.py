"""``asyncml run`` with a REF that names a pipeline: each row goes through every stage."""

from __future__ import annotations

from pathlib import Path

import orjson

from tests.test_job_cli import invoke, model_ref

PIPELINE = """
from asyncml import Pipeline, Retry, stage

def parse(row):
    return row["v"]

def check(v):
    if v == 6:
        raise ValueError("six is not allowed")
    return v

def square(batch):
    return [v * v for v in batch]

pipeline = Pipeline(
    stage(parse, executor="inline"),
    stage(check, executor="thread", retry=Retry(2, backoff=0.0)),
    stage(square, batched=True, batch_size=4),
)
"""


def test_a_pipeline_ref_runs_every_row_through_its_stages(tmp_path: Path) -> None:
    given, output = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    given.write_bytes(b"".join(orjson.dumps({"v": v}) + b"\n" for v in range(10)))
    result = invoke(model_ref(tmp_path, "pipeline", PIPELINE), "-i", given, "-o", output)
    assert result.exit_code == 0, result.output
    rows = [orjson.loads(line) for line in output.read_bytes().splitlines()]
    assert rows == [{"id": v, "prediction": v * v} for v in range(10) if v != 6]
    dead = [
        orjson.loads(line) for line in (tmp_path / "out.jsonl.dead.jsonl").read_bytes().splitlines()
    ]
    assert dead == [
        {"row": 6, "id": 6, "stage": "check", "error": "ValueError",
         "message": "six is not allowed"}
    ]  # fmt: skip
    assert "9 ok, 1 failed" in result.stderr


def test_a_pipeline_refuses_model_options(tmp_path: Path) -> None:
    given, output = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    given.write_bytes(b'{"v": 1}\n')
    ref = model_ref(tmp_path, "pipeline", PIPELINE)
    result = invoke(ref, "-i", given, "-o", output, "--workers", "2")
    assert result.exit_code == 2
    assert "is a pipeline: its stages choose their executors" in result.stderr
    assert not output.exists()
