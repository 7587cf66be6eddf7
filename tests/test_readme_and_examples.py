"""The README's quickstart and every program in examples/ run, offline, as shipped."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
README = (ROOT / "README.md").read_text()


def run_python(source: str | Path, timeout: float = 120) -> str:
    args = [str(source)] if isinstance(source, Path) else ["-c", source]
    done = subprocess.run(
        [sys.executable, "-W", "error", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    return done.stdout


def test_the_quickstart_runs() -> None:
    quickstart = README.split("## Quickstart", 1)[1]
    code = re.search(r"```python\n(.*?)```", quickstart, re.S)
    assert code is not None
    output = run_python(code.group(1))
    assert "failed: model 'Normalizer' failed" in output
    assert output.strip().endswith("items per batch")


def test_the_readme_gives_exactly_the_two_set_up_commands_ci_runs() -> None:
    commands = re.findall(r"^(python3 -m venv .*?)  # (main job|tests)$", README, re.M)
    assert [label for _, label in commands] == ["main job", "tests"]
    assert ".venv/bin/asyncml run examples/digits/model.py:DigitsClassifier" in commands[0][0]
    assert "--input examples/digits/digits.jsonl" in commands[0][0]
    # A fresh output folder each time, so the command works again and again.
    assert '--output "$(mktemp -d)/' in commands[0][0]
    assert "pytest" in commands[1][0]
    ci = (ROOT / ".ci" / "run").read_text()
    assert 'readme_command "main job"' in ci
    assert 'readme_command "tests"' in ci


#: What each example must print (a regular expression); every example must be listed.
EXPECTED = {
    "classify_digits.py": r"64 clients classified 17,980 digits .* accuracy 9\d\.\d%"
    r".*batches of .* event-loop lag p99",
    "crash_safe_processes.py": r"scored 3,999 of 4,000 records in 2 worker processes"
    r".*record 1234 failed alone: killed by SIGSEGV, after 2 attempts"
    r".*workers replaced: [1-9]",
    "parallel_map.py": r"C=0.01 .*C=10.0 .*best C=",
    "pipeline_digits.py": r"797 items in .*: 797 outputs, 0 failed; held-out accuracy 9\d\.\d%"
    r".*fetch +797 done, [1-9]\d* retries",
    "ray_digits.py": r"64 clients classified 4,495 digits on 2 Ray actors .* accuracy 9\d\.\d%"
    r".*actor \S+:\d+ served [1-9].*actor \S+:\d+ served [1-9]",
    "serve_digits.py": r"serving 'digits' at .*2,000 answered, accuracy 9\d\.\d%.*stopped",
    "shared_arrays.py": r"plain arrays : 32 frames standardised=True, 0 returned in place.*"
    r"shared arrays: 32 frames standardised=True, 32 returned in place",
    "serve_pipeline.py": r"serving pipeline 'digits' at .*fails at stage 'check': HTTP 500"
    r".*2,000 answered, accuracy 9\d\.\d%.*stage=\"DigitClassifier\"\} 2005\.0.*stopped",
}


@pytest.mark.timeout(180)  # examples that start Ray or worker processes are slow when busy
@pytest.mark.parametrize("example", sorted((ROOT / "examples").glob("*.py")), ids=lambda p: p.name)
def test_every_example_runs(example: Path) -> None:
    assert example.name in EXPECTED, f"add what {example.name} must print to EXPECTED"
    output = run_python(example)
    assert re.search(EXPECTED[example.name], output, re.S), output
