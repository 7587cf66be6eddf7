"""Models for tests that kill the process workers of a served model: module level, so
that spawned workers can import them, and with no imports beyond the standard library and
asyncml, so that they start quickly."""

from __future__ import annotations

import os
from typing import Any

import asyncml


def pids(batch: list[Any]) -> list[int]:
    """Each item's answer is the pid of the worker that ran it."""
    return [os.getpid() for _ in batch]


class SetsUpOnlyTwice(asyncml.Model[Any, int]):
    """Answers with its worker's pid; only the first two setups (one per worker of a pool
    of two) succeed: every replacement worker's setup() raises, as when the weights it
    loads have gone."""

    def __init__(self, log: str) -> None:
        self.log = log

    def setup(self) -> None:
        with open(self.log, "a") as log:
            log.write(f"{os.getpid()}\n")
        with open(self.log) as log:
            if len(log.readlines()) > 2:
                raise OSError("the weights are gone")

    def predict(self, batch: list[Any]) -> list[int]:
        return [os.getpid() for _ in batch]
