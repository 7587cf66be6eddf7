"""Every ```python block in docs/*.md runs, so the user guide cannot drift from the code.

Each block runs in its own interpreter: blocks call ``asyncio.run`` themselves, and a fresh
process keeps their threads, loops and module state away from the test session. A block
passes if it exits with status 0 and writes nothing to stderr: warnings are errors, and an
un-retrieved task exception, logged by asyncio, fails it too. Blocks that are not
meant to run are fenced as ```text or ```pycon.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PYTHON_BLOCK = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)
BLOCK_TIMEOUT_S = 30


def _blocks() -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    for page in sorted(DOCS.glob("*.md")):
        for number, match in enumerate(PYTHON_BLOCK.finditer(page.read_text("utf-8")), 1):
            found.append((f"{page.name}:{number}", match.group(1)))
    return found


BLOCKS = _blocks()


def test_the_docs_have_examples() -> None:
    pages = {block_id.split(":")[0] for block_id, _ in BLOCKS}
    assert {"index.md", "models.md", "calling.md", "batching.md"} <= pages


@pytest.mark.parametrize("code", [code for _, code in BLOCKS], ids=[i for i, _ in BLOCKS])
def test_doc_example_runs(code: str, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "PYTHONWARNINGS": "error"}
    script = tmp_path / "example.py"  # a file, as users run them: process workers import it
    script.write_text(code, "utf-8")
    result = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=BLOCK_TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 0, f"exit status {result.returncode}\n{result.stderr}"
    assert result.stderr == "", result.stderr
