"""Waiting for cleanup that must finish even when the waiter is cancelled."""

from __future__ import annotations

import asyncio
from typing import Any


async def wait_shielded(future: asyncio.Future[Any]) -> None:
    """Waits until ``future`` is done, whatever cancellations arrive meanwhile.

    Used where giving up would leak a thread or a process. A cancellation that arrives while
    waiting is re-raised once the future is done; ``future``'s own exception is not raised
    (its owner retrieves it).
    """
    cancelled: asyncio.CancelledError | None = None
    while not future.done():
        try:
            await asyncio.wait((future,))
        except asyncio.CancelledError as exc:
            cancelled = exc
    if cancelled is not None:
        raise cancelled
