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
