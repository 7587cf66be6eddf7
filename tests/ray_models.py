"""Models for Ray and crash-contract tests: module level, so that workers of either kind
can import them."""

from __future__ import annotations

import itertools
import os
import time
from typing import Any

import asyncml


def tripled_with_pid(batch: list[int]) -> list[tuple[int, int]]:
    """Each item tripled, with the worker's pid (so a test knows whom to kill)."""
    pid = os.getpid()
    return [(3 * x, pid) for x in batch]


#: Calls of :func:`tripled_with_call` in this process so far.
_CALLS = itertools.count(1)


def tripled_with_call(batch: list[int]) -> list[tuple[int, int, int]]:
    """Each item tripled, with what the items of one call share: the worker's pid and the
    call's number in that worker. Raises for a batch holding a negative number (a model
    bug, not a crash)."""
    if any(x < 0 for x in batch):
        raise ValueError("negative numbers are not welcome")
    pid, call = os.getpid(), next(_CALLS)
    return [(3 * x, pid, call) for x in batch]


class SetsUpOnce(asyncml.Model[int, tuple[int, int]]):
    """Answers as :func:`tripled_with_pid`; only its first setup() succeeds, leaving
    ``marker`` behind: every replacement worker's setup() raises, as when the weights it
    loads have gone."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def setup(self) -> None:
        try:
            open(self.marker, "x").close()
        except FileExistsError:
            raise OSError("the weights are gone") from None

    def predict(self, batch: list[int]) -> list[tuple[int, int]]:
        return tripled_with_pid(batch)


def fails_on_multiples_of_7(batch: list[int]) -> list[int]:
    """Raises for a batch holding a multiple of 7 (a model bug, not a crash)."""
    if any(x % 7 == 0 for x in batch):
        raise ValueError("multiples of 7 are not welcome")
    return [3 * x for x in batch]


def node_and_pid(batch: list[Any]) -> list[tuple[str, int]]:
    """Where each item ran: the Ray node's id and the actor's pid."""
    import ray

    node = ray.get_runtime_context().get_node_id()
    return [(node, os.getpid()) for _ in batch]


def shape_and_sum(batch: list[Any]) -> list[tuple[tuple[int, ...], float]]:
    return [(tuple(x.shape), float(x.sum())) for x in batch]


def tripled_unless_held(batch: list[Any]) -> list[Any]:
    """Numbers tripled. A string names a file: its item leaves ``<file>.held`` to say that
    it runs, and answers ``"released"`` once the file exists, so that a test decides when a
    request in flight may finish."""
    answers: list[Any] = []
    for item in batch:
        if isinstance(item, str):
            open(f"{item}.held", "w").close()
            while not os.path.exists(item):
                time.sleep(0.01)
            answers.append("released")
        else:
            answers.append(3 * item)
    return answers
