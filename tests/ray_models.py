"""Models for Ray and crash-contract tests: module level, so that workers of either kind
can import them."""

from __future__ import annotations

import os
from typing import Any


def tripled_with_pid(batch: list[int]) -> list[tuple[int, int]]:
    """Each item tripled, with the worker's pid (so a test knows whom to kill)."""
    pid = os.getpid()
    return [(3 * x, pid) for x in batch]


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
