"""The benchmark runner runs end to end and writes the JSON rows it promises."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]
REQUIRED = {"workload", "system", "callers", "items_per_s", "p50_ms", "p99_ms", "peak_rss_mb"}


def test_a_quick_w3_run_writes_every_row_with_its_ratios(tmp_path: Path) -> None:
    out = tmp_path / "w3.json"
    done = subprocess.run(
        [sys.executable, "benchmarks/run.py", "--quick", "--workloads", "W3", "--repeats", "1",
         "--json", str(out)],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "asyncml" in done.stdout  # the table
    rows = json.loads(out.read_text())
    systems = {row["system"] for row in rows}
    assert {"ceiling", "floor", "asyncml", "hand-batcher", "naive-thread"} <= systems
    for row in rows:
        assert set(row) >= REQUIRED, row
        assert row["items_per_s"] > 0
        assert "ratio_to_ceiling" in row
    asyncml_row = next(row for row in rows if row["system"] == "asyncml")
    assert asyncml_row["callers"] == 256
    assert asyncml_row["ratio_to_floor"] > 0
    assert "hand-batcher" in asyncml_row["ratio_to_peers"]


def test_the_pipeline_benchmark_measures_w4_and_inline_stage_overhead(tmp_path: Path) -> None:
    out = tmp_path / "pipeline.json"
    done = subprocess.run(
        [sys.executable, "benchmarks/pipeline.py", "--items", "300", "--noop-items", "20000",
         "--repeats", "1", "--json", str(out)],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "W4 io-pipeline" in done.stdout
    w4, noop = json.loads(out.read_text())
    assert set(w4["items_per_s"]) == {"fetch-only", "naive", "asyncml"}
    assert all(rate > 0 for rate in w4["items_per_s"].values())
    assert w4["nominal_ceiling"] > 0
    assert noop["items"] == 20_000
    assert "us_per_item_per_stage" in noop
