"""Intra-op thread limits, so that workers x threads does not oversubscribe the cores.

BLAS and OpenMP pools default to one thread per core. With several workers each running a
model, that is workers x cores threads fighting over the cores: scikit-learn's MLP ran 60x
slower at batch 128 on two cores that way. Each worker therefore limits its own pools, after
``setup()`` (the libraries are loaded by then), and restores them when it stops.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Literal

IntraOpThreads = int | Literal["auto"] | None


def resolve_intra_op_threads(setting: IntraOpThreads, workers: int) -> int | None:
    """The number of threads each worker's pools may use, or ``None`` to leave them alone.

    Raises:
        ValueError: ``setting`` is not ``"auto"``, ``None`` or an int >= 1.
    """
    if setting is None:
        return None
    if setting == "auto":
        return max(1, (os.cpu_count() or 1) // max(1, workers))
    if isinstance(setting, bool) or not isinstance(setting, int) or setting < 1:
        raise ValueError(f"intra_op_threads must be 'auto', None or an int >= 1, got {setting!r}")
    return setting


def limit_intra_op_threads(threads: int | None) -> Callable[[], None]:
    """Limits BLAS, OpenMP and (if loaded) torch thread pools; returns the undo function."""
    if threads is None:
        return _nothing
    from threadpoolctl import threadpool_limits

    limits = threadpool_limits(limits=threads)
    torch = sys.modules.get("torch")
    torch_before = torch.get_num_threads() if torch is not None else None
    if torch is not None:
        torch.set_num_threads(threads)

    def restore() -> None:
        limits.restore_original_limits()
        if torch is not None and torch_before is not None:
            torch.set_num_threads(torch_before)

    return restore


def _nothing() -> None:
    pass
