"""What the subcommands share: option types for numbers that must be finite and of sane size,
and errors shown on one line.

click's ranges let ``nan`` and ``inf`` through (no comparison fails for them), and an
absurd count (``--workers 99999999999999999999``) would exhaust memory before anything
refuses it: both are refused here with click's usual one-line usage error.
"""

from __future__ import annotations

import math
from typing import Any

import click

#: Workers per model, at most.
MAX_WORKERS = 1024
#: The most a count option (a batch size, a queue, a chunk) may be.
MAX_COUNT = 1 << 30


class Finite(click.FloatRange):
    """A float range that refuses NaN and infinities."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if number is not None and not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number


def count(maximum: int = MAX_COUNT) -> click.IntRange:
    """An int from 1 to ``maximum``."""
    return click.IntRange(1, maximum)


def one_line(message: str) -> str:
    """An error's first line: the rest of some errors (Ray's, about a worker that could not
    start) is a traceback, which the CLI never shows."""
    return message.strip().splitlines()[0] if message.strip() else message
