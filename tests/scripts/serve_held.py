"""A model for ``asyncml serve`` tests: each batch announces itself on stdout, then waits
for a line on stdin, so the test decides when in-flight work may finish."""

from __future__ import annotations

import sys
from typing import Any


def held(batch: list[Any]) -> list[Any]:
    print("computing", flush=True)
    sys.stdin.readline()
    return [f"done {item}" for item in batch]


#: Not a model: serving it is a usage error.
NOT_A_MODEL = 42
