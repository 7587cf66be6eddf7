"""The HTTP layer's settings (batching, queue bounds and deadlines are the models')."""

from __future__ import annotations

import math
from dataclasses import dataclass
from importlib.metadata import version

#: asyncml's version, as the server reports it (read once: it is file I/O).
SERVER_VERSION = version("asyncml")
#: Default bound of a request body: 16 MiB.
DEFAULT_MAX_BODY_SIZE = 16 * 2**20


@dataclass(frozen=True, slots=True)
class ServingOptions:
    """How the app treats requests.

    Attributes:
        max_body_size: bytes a request body may have; a larger one gets 413 before it is
            read in full.
        max_items_per_request: items one request may carry (``inputs`` of a v1 request,
            rows of a v2 request); more gets 422.
        retry_after: seconds a refused client is told to wait (``Retry-After`` on 503).
        loop_lag_interval: seconds between event-loop lag samples (``/metrics``).
    """

    max_body_size: int = DEFAULT_MAX_BODY_SIZE
    max_items_per_request: int = 1024
    retry_after: float = 1.0
    loop_lag_interval: float = 0.05

    def __post_init__(self) -> None:
        for name in ("max_body_size", "max_items_per_request"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        for name in ("retry_after", "loop_lag_interval"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not 0 < value < math.inf:
                raise ValueError(f"{name} must be a finite number of seconds > 0, got {value!r}")
